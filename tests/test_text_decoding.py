"""Greedy and beam-search decoding: beam 1 equals greedy, a wide beam finds the exact best
sequence (checked by enumerating every sequence), finished beams stop."""

import itertools

import numpy as np
from keras import ops

from iseg.text import FACLSTM
from iseg.text.decoding import beam_search, finish, greedy_search

K, STEPS = 3, 3  # classes (0 = end of word) and steps of the toy decoder


def _toy_step(table):
    """A decoder whose next-token logits depend on the previous token and a hidden counter
    (so the best sequence is not the greedy one)."""
    table = ops.convert_to_tensor(table)

    def step(prev, constants, state):
        (bias,) = constants
        (t,) = state
        logits = ops.take(table, ops.minimum(prev, K), axis=0) + bias * ops.cast(t, "float32")
        return logits, (t + 1,)
    return step


def _sequence_log_prob(step, tokens, bias):
    prev = np.array([K], "int32")
    state, total = (np.zeros((1, 1), "float32"),), 0.0
    for tok in tokens:
        logits, state = step(prev, (bias,), state)
        logp = np.asarray(ops.log_softmax(logits, axis=-1))[0]
        total += logp[tok]
        if tok == 0:
            return total
        prev = np.array([tok], "int32")
    return total


def _setup(seed):
    rng = np.random.default_rng(seed)
    table = rng.normal(scale=2.0, size=(K + 1, K)).astype("float32")
    bias = rng.normal(size=(1, K)).astype("float32")
    return _toy_step(table), bias


def test_beam_one_equals_greedy():
    for seed in range(5):
        step, bias = _setup(seed)
        state = (np.zeros((1, 1), "float32"),)
        g_tok, g_lp = greedy_search(step, (bias,), state, 1, STEPS, K)
        b_tok, b_lp = beam_search(step, (bias,), state, 1, STEPS, K, beam_width=1)
        np.testing.assert_array_equal(np.asarray(g_tok), np.asarray(b_tok))
        np.testing.assert_allclose(np.asarray(g_lp), np.asarray(b_lp))


def test_wide_beam_finds_the_exact_best_sequence():
    found_better = False
    for seed in range(8):
        step, bias = _setup(seed)
        state = (np.zeros((1, 1), "float32"),)
        # every distinct output: sequences ending at EOS, or STEPS characters without it
        candidates = [seq + (0,) for n in range(STEPS) for seq in
                      itertools.product(range(1, K), repeat=n)]
        candidates += list(itertools.product(range(1, K), repeat=STEPS))
        scores = [_sequence_log_prob(step, seq, bias) for seq in candidates]
        best = candidates[int(np.argmax(scores))]
        tokens, log_prob = beam_search(step, (bias,), state, 1, STEPS, K, beam_width=K)
        tokens = [t for t in np.asarray(tokens)[0].tolist() if t != -1]
        assert tuple(tokens) == best[:STEPS], seed
        np.testing.assert_allclose(float(np.asarray(log_prob)[0]), max(scores), rtol=1e-5)
        _, greedy_lp = greedy_search(step, (bias,), state, 1, STEPS, K)
        assert float(np.asarray(log_prob)[0]) >= float(np.asarray(greedy_lp)[0]) - 1e-5
        found_better |= float(np.asarray(log_prob)[0]) > float(np.asarray(greedy_lp)[0]) + 1e-3
    assert found_better  # the toy problem does have cases where greedy is not optimal


def test_finish_pads_after_the_first_eos():
    tokens = np.array([[3, 0, 2, 0], [1, 2, 3, 4]], "int32")
    lp = np.array([[-1.0, -2.0, -4.0, -8.0], [-1.0, -1.0, -1.0, -1.0]], "float32")
    out, total = finish(tokens, lp)
    np.testing.assert_array_equal(np.asarray(out), [[3, 0, -1, -1], [1, 2, 3, 4]])
    np.testing.assert_allclose(np.asarray(total), [-3.0, -4.0])


def test_model_beam_one_equals_greedy_and_beam_is_not_worse():
    model = FACLSTM(max_length=5, image_size=(16, 24), decoder_filters=6, attention_units=5,
                    embed_dim=3, mask_filters=4,
                    encoder_options=dict(stages=((4, 1, (2, 2)), (8, 1, (2, 1)))))
    images = np.random.default_rng(0).uniform(-1, 1, size=(3, 16, 24, 1)).astype("float32")
    g_tok, g_p = model.greedy(images)
    b_tok, b_p = model.recognize(images, beam_width=1)
    np.testing.assert_array_equal(np.asarray(g_tok), np.asarray(b_tok))
    np.testing.assert_allclose(np.asarray(g_p), np.asarray(b_p), rtol=1e-6)
    _, wide_p = model.recognize(images, beam_width=4)
    assert (np.asarray(wide_p) >= np.asarray(g_p) * (1 - 1e-5)).all()
