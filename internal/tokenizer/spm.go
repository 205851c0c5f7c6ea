package tokenizer

import (
	"fmt"
	"math"
	"os"
	"strings"
	"unicode/utf8"
)

// SentencePiece is a loaded SentencePiece model (a ModelProto file such as
// ChatGLM's tokenizer.model or ice_text.model). Encode and Decode equal
// sentencepiece's SentencePieceProcessor EncodeAsIds and DecodeIds. It is
// immutable and safe for concurrent use.
type SentencePiece struct {
	pieces []spmPiece
	// ids maps NORMAL, USER_DEFINED and UNUSED pieces to their id (the
	// encoder's vocabulary); reserved maps CONTROL, UNKNOWN and BYTE pieces.
	ids      map[string]int32
	reserved map[string]int32
	// decodeAs maps the id of an encoder piece whose text is also a
	// reserved piece to that reserved id: DecodeIds looks pieces up by
	// text, and reserved pieces win. Usually empty.
	decodeAs map[int32]int32
	byteIDs  [256]int32 // id of each <0xNN> piece, or -1
	unkID    int32
	// maxLen is the byte length of the longest encoder piece: BPE need
	// not look up longer merges.
	maxLen int

	model        modelType
	byteFallback bool
	norm         *normalizer
	unkSurface   string
	// stripLeadingSpace says whether decoding drops the U+2581 that starts
	// the text (the dummy prefix, or all leading space when extra
	// whitespace is removed).
	stripLeadingSpace      bool
	removeExtraWhitespaces bool

	vocab *byteTrie // Unigram: every encoder piece
	// Unigram scoring constants: the lowest and highest NORMAL score.
	minScore, maxScore float32

	bosPiece, eosPiece, padPiece string // the trainer's names for them
}

// LoadSentencePiece reads a SentencePiece model file.
func LoadSentencePiece(path string) (*SentencePiece, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &FileError{Path: path, Offset: -1, Err: err}
	}
	sp, err := ParseSentencePiece(data)
	return sp, withPath(err, path)
}

// ParseSentencePiece decodes a serialized SentencePiece ModelProto. Errors
// wrap ErrTruncated, ErrCorrupt or ErrUnsupported.
func ParseSentencePiece(data []byte) (*SentencePiece, error) {
	m, err := parseModelProto(data)
	if err != nil {
		return nil, err
	}
	sp, err := newSentencePiece(m)
	if err != nil {
		return nil, &FileError{Offset: -1, Err: err}
	}
	return sp, nil
}

func newSentencePiece(m *modelProto) (*SentencePiece, error) {
	switch m.trainer.modelType {
	case modelUnigram, modelBPE:
	case modelWord, modelChar:
		return nil, fmt.Errorf("%w: SentencePiece model type %d (WORD or CHAR)", ErrUnsupported, m.trainer.modelType)
	default:
		return nil, fmt.Errorf("%w: SentencePiece model type %d", ErrCorrupt, m.trainer.modelType)
	}
	if len(m.denormalizerCharsmap) > 0 {
		return nil, fmt.Errorf("%w: denormalizer rules", ErrUnsupported)
	}
	if len(m.pieces) > math.MaxInt32 {
		return nil, fmt.Errorf("%w: %d pieces", ErrCorrupt, len(m.pieces))
	}
	sp := &SentencePiece{
		pieces:                 m.pieces,
		ids:                    make(map[string]int32, len(m.pieces)),
		reserved:               make(map[string]int32),
		unkID:                  -1,
		model:                  m.trainer.modelType,
		byteFallback:           m.trainer.byteFallback,
		unkSurface:             m.trainer.unkSurface,
		stripLeadingSpace:      m.normalizer.addDummyPrefix || m.normalizer.removeExtraWhitespaces,
		removeExtraWhitespaces: m.normalizer.removeExtraWhitespaces,
		minScore:               math.MaxFloat32,
		// sentencepiece starts the maximum at FLT_MIN, the smallest positive
		// normal float, not at -FLT_MAX; with all-negative scores the
		// user-defined bonus in encodeUnigram works out to about -0.1.
		maxScore: 0x1p-126,
		bosPiece: m.trainer.bosPiece,
		eosPiece: m.trainer.eosPiece,
		padPiece: m.trainer.padPiece,
	}
	for i := range sp.byteIDs {
		sp.byteIDs[i] = -1
	}
	var userDefined []string
	for i, p := range m.pieces {
		id := int32(i)
		if p.text == "" {
			return nil, fmt.Errorf("%w: piece %d is empty", ErrCorrupt, i)
		}
		table := sp.reserved
		switch p.typ {
		case pieceNormal, pieceUserDefined, pieceUnused:
			table = sp.ids
			sp.maxLen = max(sp.maxLen, len(p.text))
		}
		if _, dup := table[p.text]; dup {
			return nil, fmt.Errorf("%w: piece %q is defined twice", ErrCorrupt, p.text)
		}
		table[p.text] = id
		switch p.typ {
		case pieceUserDefined:
			userDefined = append(userDefined, p.text)
		case pieceUnknown:
			if sp.unkID >= 0 {
				return nil, fmt.Errorf("%w: two unknown pieces (%d and %d)", ErrCorrupt, sp.unkID, i)
			}
			sp.unkID = id
		case pieceByte:
			b, ok := pieceToByte(p.text)
			if !ok {
				return nil, fmt.Errorf("%w: byte piece %q", ErrCorrupt, p.text)
			}
			sp.byteIDs[b] = id
		case pieceNormal:
			sp.minScore = min(sp.minScore, p.score)
			sp.maxScore = max(sp.maxScore, p.score)
		}
	}
	if sp.unkID < 0 {
		return nil, fmt.Errorf("%w: no unknown piece", ErrCorrupt)
	}
	for text, id := range sp.reserved {
		if alias, ok := sp.ids[text]; ok {
			if sp.decodeAs == nil {
				sp.decodeAs = make(map[int32]int32)
			}
			sp.decodeAs[alias] = id
		}
	}
	if sp.byteFallback {
		for b, id := range sp.byteIDs {
			if id < 0 {
				return nil, fmt.Errorf("%w: byte fallback without a piece for byte 0x%02X", ErrCorrupt, b)
			}
		}
	}
	var matcher *byteTrie
	if len(userDefined) > 0 {
		values := make([]int32, len(userDefined))
		matcher = newByteTrie(userDefined, values)
	}
	norm, err := newNormalizer(m.normalizer, m.trainer.treatWhitespaceAsSuffix, matcher)
	if err != nil {
		return nil, err
	}
	sp.norm = norm
	if sp.model == modelUnigram {
		keys := make([]string, 0, len(sp.ids))
		values := make([]int32, 0, len(sp.ids))
		for k, v := range sp.ids {
			keys = append(keys, k)
			values = append(values, v)
		}
		sp.vocab = newByteTrie(keys, values)
	}
	return sp, nil
}

// pieceToByte parses a byte piece, "<0xNN>" with upper-case hex digits.
func pieceToByte(p string) (byte, bool) {
	if len(p) != 6 || !strings.HasPrefix(p, "<0x") || p[5] != '>' {
		return 0, false
	}
	var v byte
	for _, c := range []byte(p[3:5]) {
		switch {
		case c >= '0' && c <= '9':
			v = v<<4 | (c - '0')
		case c >= 'A' && c <= 'F':
			v = v<<4 | (c - 'A' + 10)
		default:
			return 0, false
		}
	}
	return v, true
}

// VocabSize is the number of pieces (sentencepiece's GetPieceSize).
func (sp *SentencePiece) VocabSize() int { return len(sp.pieces) }

// PieceToID returns the id of a piece, or the unknown id when the model has
// no such piece (sentencepiece's PieceToId).
func (sp *SentencePiece) PieceToID(piece string) int {
	if id, ok := sp.reserved[piece]; ok {
		return int(id)
	}
	if id, ok := sp.ids[piece]; ok {
		return int(id)
	}
	return int(sp.unkID)
}

// IDToPiece returns the piece text of an id; ok is false outside the
// vocabulary.
func (sp *SentencePiece) IDToPiece(id int) (piece string, ok bool) {
	if id < 0 || id >= len(sp.pieces) {
		return "", false
	}
	return sp.pieces[id].text, true
}

// UnkID is the id of the unknown piece.
func (sp *SentencePiece) UnkID() int { return int(sp.unkID) }

// BOSID is the id of the beginning-of-sentence control piece (the
// trainer's bos_piece, "<s>"), or -1, as in sentencepiece.
func (sp *SentencePiece) BOSID() int { return sp.controlID(sp.bosPiece) }

// EOSID is the id of the end-of-sentence control piece, or -1.
func (sp *SentencePiece) EOSID() int { return sp.controlID(sp.eosPiece) }

// PadID is the id of the padding control piece, or -1.
func (sp *SentencePiece) PadID() int { return sp.controlID(sp.padPiece) }

func (sp *SentencePiece) controlID(piece string) int {
	id := sp.PieceToID(piece)
	if sp.pieces[id].typ == pieceControl {
		return id
	}
	return -1
}

// Encode tokenizes text into piece ids, without BOS or EOS.
func (sp *SentencePiece) Encode(text string) []int {
	return sp.appendEncode(nil, text)
}

// appendEncode appends the ids of text to ids.
func (sp *SentencePiece) appendEncode(ids []int, text string) []int {
	normalized := sp.norm.normalize(text)
	if normalized == "" {
		return ids
	}
	prevUnk := false
	emit := func(piece string, id int32) {
		unk := id == sp.unkID
		switch {
		case unk && sp.byteFallback:
			for i := 0; i < len(piece); i++ {
				ids = append(ids, int(sp.byteIDs[piece[i]]))
			}
		case unk && prevUnk:
			// sentencepiece merges a run of unknown pieces into one.
		default:
			ids = append(ids, int(id))
		}
		prevUnk = unk
	}
	if sp.model == modelBPE {
		sp.encodeBPE(normalized, emit)
	} else {
		sp.encodeUnigram(normalized, emit)
	}
	return ids
}

// Decode turns ids back into text as DecodeIds does: control pieces vanish,
// the unknown piece shows as the trainer's unk_surface (" ⁇ "), runs of
// byte pieces are reassembled as UTF-8 (each invalid byte becoming U+FFFD),
// U+2581 becomes a space and the leading dummy-prefix space is dropped.
// An id outside the vocabulary is an error wrapping ErrInvalidID.
func (sp *SentencePiece) Decode(ids []int) (string, error) {
	var b strings.Builder
	if err := sp.appendDecode(&b, ids, nil); err != nil {
		return "", err
	}
	return b.String(), nil
}

// appendDecode writes the text of ids to b. Ids for which asControl (if not
// nil) is true are decoded as control pieces: they produce nothing but end
// a run of byte pieces, which is what the ChatGLM wrappers' empty-string
// tokens do in sentencepiece's DecodePieces.
func (sp *SentencePiece) appendDecode(b *strings.Builder, ids []int, asControl func(int) bool) error {
	for _, id := range ids {
		if (asControl == nil || !asControl(id)) && (id < 0 || id >= len(sp.pieces)) {
			return fmt.Errorf("%w: %d (vocabulary of %d)", ErrInvalidID, id, len(sp.pieces))
		}
	}
	start := b.Len()
	var bytes []byte
	atStart := true // whether a leading space may still be stripped
	strippedLast := false
	for _, id := range ids {
		typ := pieceControl
		text := ""
		if asControl == nil || !asControl(id) {
			if alias, ok := sp.decodeAs[int32(id)]; ok {
				id = int(alias)
			}
			typ, text = sp.pieces[id].typ, sp.pieces[id].text
		}
		if typ == pieceByte {
			c, _ := pieceToByte(text)
			bytes = append(bytes, c)
			continue
		}
		writeBytes(b, bytes)
		bytes = bytes[:0]
		if strippedLast || b.Len() > start {
			atStart = false
		}
		strippedLast = false
		switch typ {
		case pieceControl:
			continue
		case pieceUnknown:
			b.WriteString(sp.unkSurface)
			continue
		}
		if atStart && sp.stripLeadingSpace {
			if rest, ok := strings.CutPrefix(text, spaceSymbol); ok {
				text = rest
				// With extra whitespace removed sentencepiece keeps
				// stripping until some text appears.
				strippedLast = !sp.removeExtraWhitespaces
			}
		}
		b.WriteString(strings.ReplaceAll(text, spaceSymbol, " "))
	}
	writeBytes(b, bytes)
	return nil
}

// writeBytes writes the bytes of a run of byte pieces, replacing each byte
// that does not start a valid UTF-8 sequence with U+FFFD.
func writeBytes(b *strings.Builder, bytes []byte) {
	for len(bytes) > 0 {
		r, size := utf8.DecodeRune(bytes)
		if r == utf8.RuneError && size <= 1 {
			b.WriteString("\uFFFD")
			bytes = bytes[1:]
			continue
		}
		b.Write(bytes[:size])
		bytes = bytes[size:]
	}
}
