package tokenizer

import (
	"errors"
	"fmt"
	"io"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// pieceType is ModelProto.SentencePiece.Type.
type pieceType int8

const (
	pieceNormal      pieceType = 1
	pieceUnknown     pieceType = 2
	pieceControl     pieceType = 3
	pieceUserDefined pieceType = 4
	pieceUnused      pieceType = 5
	pieceByte        pieceType = 6
)

// modelType is TrainerSpec.ModelType.
type modelType int32

const (
	modelUnigram modelType = 1
	modelBPE     modelType = 2
	modelWord    modelType = 3
	modelChar    modelType = 4
)

// spmPiece is one vocabulary entry of a SentencePiece model.
type spmPiece struct {
	text  string
	score float32
	typ   pieceType
}

// trainerSpec holds the TrainerSpec fields that change encoding or decoding.
type trainerSpec struct {
	modelType               modelType
	treatWhitespaceAsSuffix bool
	byteFallback            bool
	bosPiece                string
	eosPiece                string
	padPiece                string
	unkSurface              string
}

// normalizerSpec is NormalizerSpec.
type normalizerSpec struct {
	name                   string
	precompiledCharsmap    []byte
	addDummyPrefix         bool
	removeExtraWhitespaces bool
	escapeWhitespaces      bool
}

// modelProto is the part of a serialized sentencepiece ModelProto this
// package uses. Field numbers are those of sentencepiece_model.proto.
type modelProto struct {
	pieces     []spmPiece
	trainer    trainerSpec
	normalizer normalizerSpec
	// denormalizerCharsmap is DenormalizerSpec.precompiled_charsmap, which
	// sentencepiece applies to decoded text; we only detect it.
	denormalizerCharsmap []byte
}

// protoReader walks one protobuf message, tracking the absolute offset of
// its start in the file for error messages.
type protoReader struct {
	buf  []byte
	base int // offset of buf[0] in the file
	pos  int
}

func (r *protoReader) fail(n int) error {
	err := protowire.ParseError(n)
	kind := ErrCorrupt
	if errors.Is(err, io.ErrUnexpectedEOF) {
		kind = ErrTruncated
	}
	return &FileError{Offset: r.base + r.pos, Err: fmt.Errorf("%w: %v", kind, err)}
}

func (r *protoReader) corrupt(format string, args ...any) error {
	return &FileError{Offset: r.base + r.pos, Err: fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)}
}

// next reads the next field's tag; ok is false at the end of the message.
func (r *protoReader) next() (num protowire.Number, typ protowire.Type, ok bool, err error) {
	if r.pos >= len(r.buf) {
		return 0, 0, false, nil
	}
	num, typ, n := protowire.ConsumeTag(r.buf[r.pos:])
	if n < 0 {
		return 0, 0, false, r.fail(n)
	}
	r.pos += n
	return num, typ, true, nil
}

// want checks the wire type of a known field.
func (r *protoReader) want(num protowire.Number, got, want protowire.Type) error {
	if got != want {
		return r.corrupt("field %d has wire type %d, want %d", num, got, want)
	}
	return nil
}

func (r *protoReader) bytes(num protowire.Number, typ protowire.Type) ([]byte, int, error) {
	if err := r.want(num, typ, protowire.BytesType); err != nil {
		return nil, 0, err
	}
	v, n := protowire.ConsumeBytes(r.buf[r.pos:])
	if n < 0 {
		return nil, 0, r.fail(n)
	}
	start := r.base + r.pos + n - len(v)
	r.pos += n
	return v, start, nil
}

func (r *protoReader) varint(num protowire.Number, typ protowire.Type) (uint64, error) {
	if err := r.want(num, typ, protowire.VarintType); err != nil {
		return 0, err
	}
	v, n := protowire.ConsumeVarint(r.buf[r.pos:])
	if n < 0 {
		return 0, r.fail(n)
	}
	r.pos += n
	return v, nil
}

func (r *protoReader) float(num protowire.Number, typ protowire.Type) (float32, error) {
	if err := r.want(num, typ, protowire.Fixed32Type); err != nil {
		return 0, err
	}
	v, n := protowire.ConsumeFixed32(r.buf[r.pos:])
	if n < 0 {
		return 0, r.fail(n)
	}
	r.pos += n
	return math.Float32frombits(v), nil
}

func (r *protoReader) skip(num protowire.Number, typ protowire.Type) error {
	n := protowire.ConsumeFieldValue(num, typ, r.buf[r.pos:])
	if n < 0 {
		return r.fail(n)
	}
	r.pos += n
	return nil
}

// parseModelProto decodes a serialized ModelProto. Unknown fields are
// skipped, as protobuf requires.
func parseModelProto(data []byte) (*modelProto, error) {
	m := &modelProto{
		trainer: trainerSpec{
			modelType:  modelUnigram,
			bosPiece:   "<s>",
			eosPiece:   "</s>",
			padPiece:   "<pad>",
			unkSurface: " \u2047 ",
		},
		normalizer: normalizerSpec{addDummyPrefix: true, removeExtraWhitespaces: true, escapeWhitespaces: true},
	}
	r := &protoReader{buf: data}
	for {
		num, typ, ok, err := r.next()
		if err != nil {
			return nil, err
		}
		if !ok {
			return m, nil
		}
		switch num {
		case 1, 2, 3, 5:
			body, at, err := r.bytes(num, typ)
			if err != nil {
				return nil, err
			}
			sub := &protoReader{buf: body, base: at}
			switch num {
			case 1:
				p, err := sub.piece()
				if err != nil {
					return nil, err
				}
				m.pieces = append(m.pieces, p)
			case 2:
				err = sub.trainerSpec(&m.trainer)
			case 3:
				err = sub.normalizerSpec(&m.normalizer)
			case 5:
				var d normalizerSpec
				err = sub.normalizerSpec(&d)
				m.denormalizerCharsmap = d.precompiledCharsmap
			}
			if err != nil {
				return nil, err
			}
		default:
			if err := r.skip(num, typ); err != nil {
				return nil, err
			}
		}
	}
}

func (r *protoReader) piece() (spmPiece, error) {
	p := spmPiece{typ: pieceNormal}
	for {
		num, typ, ok, err := r.next()
		if err != nil || !ok {
			return p, err
		}
		switch num {
		case 1:
			b, _, err := r.bytes(num, typ)
			if err != nil {
				return p, err
			}
			p.text = string(b)
		case 2:
			if p.score, err = r.float(num, typ); err != nil {
				return p, err
			}
		case 3:
			v, err := r.varint(num, typ)
			if err != nil {
				return p, err
			}
			if v < uint64(pieceNormal) || v > uint64(pieceByte) {
				return p, r.corrupt("piece type %d", v)
			}
			p.typ = pieceType(v)
		default:
			if err := r.skip(num, typ); err != nil {
				return p, err
			}
		}
	}
}

func (r *protoReader) trainerSpec(t *trainerSpec) error {
	for {
		num, typ, ok, err := r.next()
		if err != nil || !ok {
			return err
		}
		switch num {
		case 3, 24, 35:
			v, err := r.varint(num, typ)
			if err != nil {
				return err
			}
			switch num {
			case 3:
				t.modelType = modelType(int32(v))
			case 24:
				t.treatWhitespaceAsSuffix = v != 0
			case 35:
				t.byteFallback = v != 0
			}
		case 44, 46, 47, 48:
			b, _, err := r.bytes(num, typ)
			if err != nil {
				return err
			}
			s := string(b)
			switch num {
			case 44:
				t.unkSurface = s
			case 46:
				t.bosPiece = s
			case 47:
				t.eosPiece = s
			case 48:
				t.padPiece = s
			}
		default:
			if err := r.skip(num, typ); err != nil {
				return err
			}
		}
	}
}

func (r *protoReader) normalizerSpec(n *normalizerSpec) error {
	for {
		num, typ, ok, err := r.next()
		if err != nil || !ok {
			return err
		}
		switch num {
		case 1, 2:
			b, _, err := r.bytes(num, typ)
			if err != nil {
				return err
			}
			if num == 1 {
				n.name = string(b)
			} else {
				n.precompiledCharsmap = b
			}
		case 3, 4, 5:
			v, err := r.varint(num, typ)
			if err != nil {
				return err
			}
			switch num {
			case 3:
				n.addDummyPrefix = v != 0
			case 4:
				n.removeExtraWhitespaces = v != 0
			case 5:
				n.escapeWhitespaces = v != 0
			}
		default:
			if err := r.skip(num, typ); err != nil {
				return err
			}
		}
	}
}
