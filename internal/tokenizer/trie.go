package tokenizer

import "sort"

// byteTrie is an immutable byte-wise trie over a set of keys, each with an
// int32 value. A node's children are stored contiguously and sorted by
// label, so a step is a binary search with no hashing or allocation.
type byteTrie struct {
	nodes []trieNode
	edges []trieEdge
}

type trieNode struct {
	first int32 // index of the first child edge
	count int32 // number of child edges
	value int32 // value of the key ending here, or -1
}

type trieEdge struct {
	label byte
	child int32
}

// newByteTrie builds a trie of keys (which need not be sorted but must be
// unique and non-empty) mapping keys[i] to values[i].
func newByteTrie(keys []string, values []int32) *byteTrie {
	order := make([]int, len(keys))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return keys[order[a]] < keys[order[b]] })
	sorted := make([]string, len(keys))
	vals := make([]int32, len(keys))
	for i, o := range order {
		sorted[i], vals[i] = keys[o], values[o]
	}
	t := &byteTrie{nodes: []trieNode{{value: -1}}}
	t.build(0, sorted, vals, 0)
	return t
}

// build fills node, whose keys all share their first depth bytes.
func (t *byteTrie) build(node int32, keys []string, vals []int32, depth int) {
	if len(keys) > 0 && len(keys[0]) == depth {
		t.nodes[node].value = vals[0]
		keys, vals = keys[1:], vals[1:]
	}
	first := int32(len(t.edges))
	var bounds []int
	for i := 0; i < len(keys); {
		j := i + 1
		for j < len(keys) && keys[j][depth] == keys[i][depth] {
			j++
		}
		t.nodes = append(t.nodes, trieNode{value: -1})
		t.edges = append(t.edges, trieEdge{label: keys[i][depth], child: int32(len(t.nodes) - 1)})
		bounds = append(bounds, i, j)
		i = j
	}
	t.nodes[node].first = first
	t.nodes[node].count = int32(len(t.edges)) - first
	for k := 0; k < len(bounds); k += 2 {
		lo, hi := bounds[k], bounds[k+1]
		t.build(t.edges[first+int32(k/2)].child, keys[lo:hi], vals[lo:hi], depth+1)
	}
}

// child returns the child of node along label c, or -1.
func (t *byteTrie) child(node int32, c byte) int32 {
	n := t.nodes[node]
	lo, hi := n.first, n.first+n.count
	for lo < hi {
		mid := int32(uint32(lo+hi) >> 1)
		switch l := t.edges[mid].label; {
		case l == c:
			return t.edges[mid].child
		case l < c:
			lo = mid + 1
		default:
			hi = mid
		}
	}
	return -1
}

// longestPrefix returns the length of the longest key that is a prefix of s,
// or 0.
func (t *byteTrie) longestPrefix(s string) int {
	best := 0
	node := int32(0)
	for i := 0; i < len(s); i++ {
		if node = t.child(node, s[i]); node < 0 {
			break
		}
		if t.nodes[node].value >= 0 {
			best = i + 1
		}
	}
	return best
}
