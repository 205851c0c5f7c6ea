package tokenizer

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrUnknownFamily means Load found a SentencePiece tokenizer.model but
// nothing in the folder says whether it is ChatGLM2 or ChatGLM3 (their
// files are identical); set Options.Family.
var ErrUnknownFamily = errors.New("cannot tell the model family")

// Files Load looks for in a model folder, as THUDM's repositories name them.
const (
	iceTextFile         = "ice_text.model"  // ChatGLM-6B vocabulary
	tokenizerModelFile  = "tokenizer.model" // ChatGLM2/3 (SentencePiece) or GLM-4 (tiktoken)
	tokenizerConfigFile = "tokenizer_config.json"
	tokenizationCode    = "tokenization_chatglm.py"
)

// tokenizerConfig is the part of tokenizer_config.json Load reads.
type tokenizerConfig struct {
	NameOrPath         string                `json:"name_or_path"`
	PrivateNameOrPath  string                `json:"_name_or_path"`
	TokenizerClass     string                `json:"tokenizer_class"`
	NumImageTokens     *int                  `json:"num_image_tokens"`
	AddedTokensDecoder map[string]addedToken `json:"added_tokens_decoder"`
}

type addedToken struct {
	Content string `json:"content"`
}

// Load reads the tokenizer of a model folder: ice_text.model (ChatGLM-6B)
// or tokenizer.model (SentencePiece for ChatGLM2/3, tiktoken text for
// GLM-4), with tokenizer_config.json when present. The family comes from
// opts.Family, else from the file format, the config's model name or
// tokenizer class, or THUDM's tokenization_chatglm.py beside it.
func Load(dir string, opts Options) (Tokenizer, error) {
	cfg, err := readTokenizerConfig(dir)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, iceTextFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		path = filepath.Join(dir, tokenizerModelFile)
		data, err = os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, &FileError{Path: dir, Offset: -1, Err: fmt.Errorf("%w: neither %s nor %s", ErrNoTokenizer, iceTextFile, tokenizerModelFile)}
		}
	}
	if err != nil {
		return nil, &FileError{Path: path, Offset: -1, Err: err}
	}

	if looksLikeTiktoken(data) {
		if opts.Family != "" && opts.Family != GLM4 {
			return nil, &FileError{Path: path, Offset: -1, Err: fmt.Errorf("%w: a tiktoken vocabulary for family %s", ErrUnsupported, opts.Family)}
		}
		bpe, err := ParseByteBPE(data)
		if err != nil {
			return nil, withPath(err, path)
		}
		special, err := glm4SpecialFromConfig(cfg.AddedTokensDecoder)
		if err == nil {
			var t Tokenizer
			if t, err = NewGLM4(bpe, special, opts.EncodeSpecialTokens); err == nil {
				return t, nil
			}
		}
		return nil, withPath(err, filepath.Join(dir, tokenizerConfigFile))
	}

	sp, err := ParseSentencePiece(data)
	if err != nil {
		return nil, withPath(err, path)
	}
	family := opts.Family
	if family == "" {
		if family, err = detectFamily(dir, path, cfg); err != nil {
			return nil, err
		}
	}
	switch family {
	case ChatGLM:
		images := DefaultImageTokens
		if cfg.NumImageTokens != nil {
			images = *cfg.NumImageTokens
		}
		t, err := NewChatGLM(sp, images)
		return t, withPath(err, path)
	case ChatGLM2:
		return NewChatGLM2(sp), nil
	case ChatGLM3:
		return NewChatGLM3(sp, opts.EncodeSpecialTokens), nil
	}
	return nil, &FileError{Path: path, Offset: -1, Err: fmt.Errorf("%w: a SentencePiece vocabulary for family %q", ErrUnsupported, family)}
}

func readTokenizerConfig(dir string) (tokenizerConfig, error) {
	var cfg tokenizerConfig
	path := filepath.Join(dir, tokenizerConfigFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return cfg, nil
	}
	if err != nil {
		return cfg, &FileError{Path: path, Offset: -1, Err: err}
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return cfg, &FileError{Path: path, Offset: -1, Err: fmt.Errorf("%w: %v", ErrCorrupt, err)}
	}
	return cfg, nil
}

// looksLikeTiktoken tells a tiktoken text vocabulary from a SentencePiece
// protobuf (which starts with the byte 0x0A) by its first line: a base64
// token and a rank.
func looksLikeTiktoken(data []byte) bool {
	line, _, _ := bytes.Cut(data[:min(len(data), 512)], []byte("\n"))
	fields := strings.Fields(string(line))
	if len(fields) != 2 {
		return false
	}
	if _, err := base64.StdEncoding.DecodeString(fields[0]); err != nil {
		return false
	}
	_, err := strconv.Atoi(fields[1])
	return err == nil
}

// detectFamily tells ChatGLM-6B, ChatGLM2 and ChatGLM3 SentencePiece
// folders apart.
func detectFamily(dir, vocabPath string, cfg tokenizerConfig) (Family, error) {
	if filepath.Base(vocabPath) == iceTextFile {
		return ChatGLM, nil
	}
	for _, name := range []string{cfg.NameOrPath, cfg.PrivateNameOrPath} {
		switch name = strings.ToLower(name); {
		case strings.Contains(name, "chatglm3"):
			return ChatGLM3, nil
		case strings.Contains(name, "chatglm2"):
			return ChatGLM2, nil
		}
	}
	code, err := os.ReadFile(filepath.Join(dir, tokenizationCode))
	switch {
	case err == nil && bytes.Contains(code, []byte("<|observation|>")):
		return ChatGLM3, nil
	case err == nil:
		return ChatGLM2, nil
	case !errors.Is(err, fs.ErrNotExist):
		return "", &FileError{Path: filepath.Join(dir, tokenizationCode), Offset: -1, Err: err}
	}
	return "", &FileError{Path: dir, Offset: -1, Err: fmt.Errorf("%w: %s could be ChatGLM2 or ChatGLM3", ErrUnknownFamily, tokenizerModelFile)}
}
