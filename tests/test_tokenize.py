from metanlp_cli.data.tokenize import WordTokenizer


def test_vocabulary_comes_from_the_fitted_texts_only():
    tokenizer = WordTokenizer().fit(["Hello world!", "hello there"])
    assert tokenizer.vocabulary == ["<pad>", "<unk>", "<sep>", "!", "hello", "there", "world"]
    ids = tokenizer.encode(["hello unseen", "world"])
    assert ids.tolist() == [[4, 1, 0, 0, 0], [6, 0, 0, 0, 0]]  # padded to min_length 5


def test_pairs_are_joined_with_the_separator_and_truncated():
    tokenizer = WordTokenizer(max_length=4, min_length=1).fit(["a b c d"])
    assert tokenizer.encode([("a b", "c d")]).tolist() == [[3, 4, 2, 5]]


def test_oov_buckets_give_unseen_words_stable_distinct_ids():
    tokenizer = WordTokenizer(oov_buckets=1000).fit(["known"])
    first, second = tokenizer.ids("alpha beta alpha")[:3], tokenizer.ids("alpha")
    assert first[0] == first[2] == second[0] and first[0] != first[1]
    assert all(4 <= i < tokenizer.vocab_size for i in first)


def test_empty_text_is_one_unknown_token_and_state_round_trips():
    tokenizer = WordTokenizer().fit(["x y"])
    assert tokenizer.ids("") == [1]
    other = WordTokenizer()
    other.load_state_dict(tokenizer.state_dict())
    assert other.encode(["y x z"]).tolist() == tokenizer.encode(["y x z"]).tolist()
