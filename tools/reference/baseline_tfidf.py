"""The specialised baseline: TF-IDF features and logistic regression.

Usage: baseline_tfidf.py TRAIN_TSV TEST_TSV OUT_JSON

Both files hold one example a line, label<TAB>text, no header (blank lines
are skipped). Fits scikit-learn's TfidfVectorizer (word unigrams and
bigrams, sublinear term frequencies, terms in at least 2 training texts)
and LogisticRegression (C 4, at most 1000 iterations, no class weights,
random_state 0) on the training file and predicts the test file's labels
(its label column is not read). OUT_JSON gets {"predictions": [label per
test row, in order]}; nothing is printed on success.
"""

import json
import sys

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

C = 4.0


def read_tsv(path):
    """The labels and texts of a label<TAB>text file."""
    labels, texts = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            label, sep, text = line.partition("\t")
            if not sep:
                sys.exit(f"{path}:{n}: no tab between label and text")
            labels.append(label)
            texts.append(text)
    return labels, texts


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    train, test, out = sys.argv[1:]
    labels, texts = read_tsv(train)
    _, test_texts = read_tsv(test)
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    classifier = LogisticRegression(C=C, max_iter=1000, class_weight=None, random_state=0)
    classifier.fit(vectorizer.fit_transform(texts), labels)
    predictions = classifier.predict(vectorizer.transform(test_texts)).tolist()
    with open(out, "w") as f:
        json.dump({"predictions": predictions}, f)


if __name__ == "__main__":
    main()
