package tokenizer

import (
	"errors"
	"fmt"
)

// Kinds of failure, for errors.Is. Errors returned by this package wrap one of
// them, usually inside a *FileError.
var (
	// ErrNoTokenizer means a model folder holds none of the tokenizer files
	// this package reads.
	ErrNoTokenizer = errors.New("no tokenizer file")
	// ErrTruncated means a tokenizer file ends in the middle of a record.
	ErrTruncated = errors.New("truncated tokenizer file")
	// ErrCorrupt means a tokenizer file is malformed or inconsistent.
	ErrCorrupt = errors.New("corrupt tokenizer file")
	// ErrUnsupported means a well-formed file uses a feature this package
	// does not implement (for example a SentencePiece WORD or CHAR model).
	ErrUnsupported = errors.New("unsupported tokenizer feature")
	// ErrInvalidID means Decode was given an id outside the vocabulary.
	ErrInvalidID = errors.New("token id out of range")
)

// FileError reports a tokenizer file that could not be read or parsed.
type FileError struct {
	Path   string // the file, or "" when parsing bytes given directly
	Offset int    // byte offset of the problem in the file, or -1 if unknown
	Err    error  // the cause; wraps ErrTruncated, ErrCorrupt, ErrUnsupported or an fs error
}

func (e *FileError) Error() string {
	name := e.Path
	if name == "" {
		name = "tokenizer data"
	}
	if e.Offset >= 0 {
		return fmt.Sprintf("%s at byte %d: %v", name, e.Offset, e.Err)
	}
	return fmt.Sprintf("%s: %v", name, e.Err)
}

func (e *FileError) Unwrap() error { return e.Err }

// withPath sets the file name on a *FileError produced while parsing bytes,
// and wraps any other error in one.
func withPath(err error, path string) error {
	if err == nil {
		return nil
	}
	var fe *FileError
	if errors.As(err, &fe) {
		fe.Path = path
		return fe
	}
	return &FileError{Path: path, Offset: -1, Err: err}
}
