// emoflow_chatglm_score: exact label log-probabilities with chatglm.cpp.
//
// chatglm.cpp's Python API only returns the next token id; its C++ model
// returns the logits of the last position from forward_graph_compute. This
// module uses that call exactly as chatglm.cpp's own generation loop does:
// one prefill of the prompt (n_past 0), then one token per call with the
// KV cache of everything before it. A label's log-probability is that of
// its tokens followed by the stop token; the tokens all labels start with
// are decoded once, and each label continues from the same cache position
// (the cache rows after it are simply overwritten).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "chatglm.h"

namespace py = pybind11;

namespace {

// Row is one position's logits with their log-normaliser (double precision).
struct Row {
    std::vector<float> logits;
    double log_z = 0;

    double at(int token) const { return double(logits.at(token)) - log_z; }
};

class Scorer {
  public:
    explicit Scorer(const std::string &path) : pipeline_(std::make_unique<chatglm::Pipeline>(path)) {}

    int vocab_size() const { return pipeline_->model->config.vocab_size; }
    int max_length() const { return pipeline_->model->config.max_length; }

    // next runs chatglm.cpp's forward pass on ids (the prompt when n_past is
    // 0, else one new token at the end) and returns the last position's row.
    Row next(const std::vector<int> &ids, int n_past) {
        ggml_tensor *logits = pipeline_->model->forward_graph_compute(ids, std::nullopt, n_past, ids.size(), true);
        Row r;
        r.logits.resize(logits->ne[0]);
        ggml_backend_tensor_get(logits, r.logits.data(), 0, r.logits.size() * sizeof(float));
        float m = *std::max_element(r.logits.begin(), r.logits.end());
        double s = 0;
        for (float x : r.logits) {
            s += std::exp(double(x - m));
        }
        r.log_z = m + std::log(s);
        return r;
    }

    // score returns every label's log-probability after prompt.
    std::vector<double> score(const std::vector<int> &prompt, const std::vector<std::vector<int>> &labels, int stop) {
        if (prompt.empty() || labels.empty()) {
            throw std::invalid_argument("score: empty prompt or no labels");
        }
        size_t longest = 0;
        for (const auto &l : labels) {
            if (l.empty()) {
                throw std::invalid_argument("score: empty label");
            }
            longest = std::max(longest, l.size());
        }
        if (int(prompt.size() + longest + 1) > max_length()) {
            throw std::invalid_argument("score: prompt and label longer than the model's max_length");
        }
        // common: tokens every label starts with, short of the shortest.
        size_t shortest = labels[0].size(), common = 0;
        for (const auto &l : labels) {
            shortest = std::min(shortest, l.size());
        }
        for (; common + 1 < shortest; common++) {
            bool same = true;
            for (const auto &l : labels) {
                same = same && l[common] == labels[0][common];
            }
            if (!same) {
                break;
            }
        }
        std::vector<int> ids = prompt;
        Row row = next(ids, 0);
        double shared = 0;
        for (size_t j = 0; j < common; j++) {
            shared += row.at(labels[0][j]);
            ids.push_back(labels[0][j]);
            row = next(ids, ids.size() - 1);
        }
        const size_t base = ids.size();
        std::vector<double> out;
        for (const auto &l : labels) {
            double lp = shared + row.at(l[common]);
            ids.resize(base);
            for (size_t j = common; j < l.size(); j++) {
                ids.push_back(l[j]);
                Row r = next(ids, ids.size() - 1);
                lp += r.at(j + 1 < l.size() ? l[j + 1] : stop);
            }
            out.push_back(lp);
        }
        return out;
    }

    // logits returns the last position's logits after a prefill of ids
    // (for checking a conversion against another implementation).
    std::vector<float> logits(const std::vector<int> &ids) { return next(ids, 0).logits; }

  private:
    std::unique_ptr<chatglm::Pipeline> pipeline_;
};

// simd names the instruction sets ggml was compiled for (its kernels pick
// their paths at compile time).
std::vector<std::string> simd() {
    std::vector<std::string> out;
    auto add = [&](const char *name, int has) {
        if (has) {
            out.emplace_back(name);
        }
    };
    add("AVX", ggml_cpu_has_avx());
    add("AVX2", ggml_cpu_has_avx2());
    add("FMA", ggml_cpu_has_fma());
    add("F16C", ggml_cpu_has_f16c());
    add("AVX_VNNI", ggml_cpu_has_avx_vnni());
    add("AVX512", ggml_cpu_has_avx512());
    add("AVX512_VBMI", ggml_cpu_has_avx512_vbmi());
    add("AVX512_VNNI", ggml_cpu_has_avx512_vnni());
    add("AVX512_BF16", ggml_cpu_has_avx512_bf16());
    add("BLAS", ggml_cpu_has_blas());
    return out;
}

} // namespace

PYBIND11_MODULE(emoflow_chatglm_score, m) {
    m.doc() = "exact label log-probabilities with chatglm.cpp (emoflow benchmark)";
    m.def("simd", &simd);
    py::class_<Scorer>(m, "Scorer")
        .def(py::init<const std::string &>(), py::arg("path"))
        .def_property_readonly("vocab_size", &Scorer::vocab_size)
        .def_property_readonly("max_length", &Scorer::max_length)
        .def("score", &Scorer::score, py::arg("prompt"), py::arg("labels"), py::arg("stop"),
             py::call_guard<py::gil_scoped_release>())
        .def("logits", &Scorer::logits, py::arg("ids"), py::call_guard<py::gil_scoped_release>());
}
