# syntax=docker/dockerfile:1
# The classifier image: the Go binary linked against libtorch 2.1.0 with
# CUDA (gotch v0.9.1), on the NVIDIA CUDA runtime, run as a non-root user.
# Build from the repository root:
#   docker build -f deploy/docker/classifier.Dockerfile -t REGISTRY/emoflow/classifier:TAG .
# Checked here by deploy/helm's TestDockerfiles (no Docker engine and no GPU
# on the development machines); not built here.

# libtorch 2.1.0 for CUDA 12.1: the libraries of the PyPI wheel
# torch==2.1.0 (pre-C++11 ABI, what gotch compiles against) and the NVIDIA
# runtime wheels it depends on.
FROM python:3.11-slim-bookworm AS libtorch
RUN pip install --no-cache-dir --target /wheels torch==2.1.0 \
 && mkdir -p /libtorch/lib \
 && cp -r /wheels/torch/include /libtorch/include \
 && cp -a /wheels/torch/lib/. /libtorch/lib/ \
 && for d in /wheels/nvidia/*/lib; do cp -a "$d"/. /libtorch/lib/; done

FROM golang:1.26.8-bookworm AS go

FROM nvidia/cuda:12.1.1-cudnn8-devel-ubuntu22.04 AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates g++ \
 && rm -rf /var/lib/apt/lists/*
COPY --from=go /usr/local/go /usr/local/go
ENV PATH=/usr/local/go/bin:$PATH
# gotch's cgo flags look for libtorch here and for CUDA in /usr/local/cuda.
COPY --from=libtorch /libtorch /usr/local/lib/libtorch
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# gotch's own (CUDA) cgo flags, not the CPU copy that scripts/setup.sh
# makes for go.work; -D_GLIBCXX_USE_CXX11_ABI=0 must reach g++ as well.
ENV GOWORK=off CGO_ENABLED=1 GOFLAGS=-buildvcs=false GOEXPERIMENT=jsonv2 \
    CGO_CXXFLAGS="-D_GLIBCXX_USE_CXX11_ABI=0" \
    LIBRARY_PATH=/usr/local/lib/libtorch/lib:/usr/local/cuda/lib64
RUN go build -trimpath -o /out/classifier ./cmd/classifier

FROM nvidia/cuda:12.1.1-cudnn8-runtime-ubuntu22.04 AS runtime
COPY --from=libtorch /libtorch/lib /opt/libtorch/lib
COPY --from=build /out/classifier /usr/local/bin/classifier
# OMP_WAIT_POLICY: idle OpenMP workers sleep rather than spin (CPU nodes;
# see Taskfile.yml).
ENV LD_LIBRARY_PATH=/opt/libtorch/lib:/usr/local/cuda/lib64 \
    EMOFLOW_DEVICE=cuda \
    OMP_WAIT_POLICY=PASSIVE
RUN groupadd --gid 65532 nonroot && useradd --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin nonroot
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/classifier"]
