"""Tests of the secure-aggregation primitives: Shamir, PRG, crypto, encoding, graph, settings."""

from __future__ import annotations

import itertools
import math
import os
import random

import numpy as np
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from common.secagg import SecAggParams
from common.secagg.crypto import (
    commit,
    decrypt,
    encrypt,
    encryption_keys,
    generate_keypair,
    mask_keys,
    public_key,
)
from common.secagg.encoding import check_no_wrap, choose_modulus_bits, decode_sum, encode
from common.secagg.graph import (
    auto_neighbours,
    auto_threshold,
    check_graph,
    neighbour_graph,
    neighbours_of,
    share_points,
)
from common.secagg.prg import expand
from common.secagg.shamir import PRIME, combine, share_from_bytes, share_to_bytes, split

# --- Shamir ---------------------------------------------------------------------------------


def test_shamir_any_t_shares_reconstruct_and_t_minus_1_do_not() -> None:
    secret = int.from_bytes(os.urandom(32), "big")
    xs = [3, 5, 8, 13, 21, 34, 55]
    shares = split(secret, 4, xs)
    points = list(zip(xs, shares, strict=True))

    for subset in itertools.combinations(points, 4):
        assert combine(*zip(*subset, strict=True)) == secret
    for subset in itertools.combinations(points, 3):
        assert combine(*zip(*subset, strict=True)) != secret
    assert combine(xs, shares) == secret  # more than t shares agree too


def test_shamir_rejects_bad_points_and_thresholds() -> None:
    with pytest.raises(ValueError, match="distinct"):
        split(7, 2, [1, 1, 2])
    with pytest.raises(ValueError, match=r"\[1, p\)"):
        split(7, 2, [0, 1, 2])
    with pytest.raises(ValueError, match="threshold"):
        split(7, 4, [1, 2, 3])
    with pytest.raises(ValueError, match="distinct"):
        combine([2, 2], [5, 6])


def test_share_bytes_round_trip_and_reject_non_field_elements() -> None:
    value = PRIME - 1

    assert share_from_bytes(share_to_bytes(value)) == value
    with pytest.raises(ValueError, match="field element"):
        share_from_bytes(b"\xff" * len(share_to_bytes(0)))
    with pytest.raises(ValueError, match="bytes"):
        share_from_bytes(b"\x00" * 3)


# --- PRG ------------------------------------------------------------------------------------


def test_prg_is_deterministic_per_key_and_differs_across_keys() -> None:
    key, other = os.urandom(32), os.urandom(32)

    first, again, different = expand(key, 1000, 40), expand(key, 1000, 40), expand(other, 1000, 40)

    assert first.dtype == np.uint64 and first.shape == (1000,)
    np.testing.assert_array_equal(first, again)
    assert np.mean(first == different) < 0.01


def test_prg_is_the_aes_ctr_keystream_reduced_mod_2_to_the_m() -> None:
    key = os.urandom(32)
    first_block = Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(bytes(16))
    words = np.frombuffer(first_block, dtype="<u8")

    np.testing.assert_array_equal(expand(key, 2, 64), words)
    np.testing.assert_array_equal(expand(key, 2, 20), words & np.uint64(2**20 - 1))


@pytest.mark.parametrize("modulus_bits", [1, 17, 32, 63, 64])
def test_prg_values_cover_the_range_mod_2_to_the_m(modulus_bits: int) -> None:
    values = expand(os.urandom(32), 4000, modulus_bits)

    assert int(values.max()) < 2**modulus_bits
    assert int(values.max()) >= 2 ** (modulus_bits - 1)  # the top bit is used


# --- crypto ---------------------------------------------------------------------------------


def test_key_agreement_is_symmetric_and_separated_by_purpose_and_round() -> None:
    a_sk, a_pk = generate_keypair()
    b_sk, b_pk = generate_keypair()

    (ab,) = encryption_keys(a_sk, [b_pk], 5, 10, [20])
    (ba,) = encryption_keys(b_sk, [a_pk], 5, 20, [10])
    (mask_ab,) = mask_keys(a_sk, [b_pk], 5, 10, [20])
    (mask_ba,) = mask_keys(b_sk, [a_pk], 5, 20, [10])
    (next_round,) = mask_keys(a_sk, [b_pk], 6, 10, [20])

    assert ab == ba and mask_ab == mask_ba
    assert len({ab, mask_ab, next_round}) == 3
    assert public_key(a_sk) == a_pk


def test_aead_round_trip_and_rejects_wrong_associated_data() -> None:
    key = os.urandom(32)
    blob = encrypt(key, b"shares", round=3, sender=2**64 - 1, receiver=7)

    assert decrypt(key, blob, 3, 2**64 - 1, 7) == b"shares"
    for round_, sender, receiver in [(4, 2**64 - 1, 7), (3, 7, 2**64 - 1), (3, 2**64 - 1, 8)]:
        with pytest.raises(InvalidTag):
            decrypt(key, blob, round_, sender, receiver)
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(InvalidTag):
        decrypt(key, tampered, 3, 2**64 - 1, 7)


def test_crypto_rejects_ids_outside_uint64_and_low_order_keys() -> None:
    sk, _ = generate_keypair()

    with pytest.raises(ValueError, match="2\\^64"):
        encrypt(os.urandom(32), b"x", 1, 2**64, 1)
    with pytest.raises(ValueError):
        mask_keys(sk, [bytes(32)], 1, 1, [2])  # the identity point gives an all-zero secret


def test_commitment_binds_secret_round_and_node() -> None:
    secret = os.urandom(32)

    assert commit(secret, 1, 2) == commit(secret, 1, 2)
    assert len({commit(secret, 1, 2), commit(secret, 2, 2), commit(secret, 1, 3)}) == 3


# --- encoding -------------------------------------------------------------------------------


def test_encoding_round_trips_negative_values_within_half_a_step() -> None:
    values = np.random.default_rng(0).normal(0, 0.3, size=1000).clip(-1, 1)

    encoded = encode(values, 16, 20, 1.0)
    decoded = decode_sum(encoded, 16, 20)

    assert encoded.dtype == np.uint64 and int(encoded.max()) < 2**20
    assert np.max(np.abs(decoded - values)) <= 2.0**-17


def test_decoded_sum_is_within_n_half_steps_and_never_wraps_at_the_bound() -> None:
    n_clients, frac_bits, bound = 40, 12, 2.5
    modulus_bits = choose_modulus_bits(n_clients, bound, frac_bits)
    rng = np.random.default_rng(1)
    values = rng.uniform(-bound, bound, size=(n_clients, 500))
    values[:, 0], values[:, 1] = bound, -bound  # the extreme sums must not wrap

    total = np.zeros(500, dtype=np.uint64)
    for row in values:
        total += encode(row, frac_bits, modulus_bits, bound)
    total &= np.uint64(2**modulus_bits - 1)
    decoded = decode_sum(total, frac_bits, modulus_bits)

    assert np.max(np.abs(decoded - values.sum(axis=0))) <= n_clients * 2.0 ** -(frac_bits + 1)
    assert decoded[0] == n_clients * bound and decoded[1] == -n_clients * bound


def test_choose_modulus_bits_is_the_smallest_safe_width() -> None:
    n_clients, bound, frac_bits = 100, 1.0, 24
    worst = n_clients * math.ceil(bound * 2**frac_bits)

    bits = choose_modulus_bits(n_clients, bound, frac_bits)

    assert worst <= 2 ** (bits - 1) - 1 < 2 * worst
    check_no_wrap(n_clients, bound, frac_bits, bits)
    with pytest.raises(ValueError, match=f"modulus_bits={bits - 1}"):
        check_no_wrap(n_clients, bound, frac_bits, bits - 1)


def test_encoding_refuses_configs_that_could_wrap_with_the_numbers() -> None:
    with pytest.raises(ValueError, match=r"1000 values with \|x\| <= 1000.0 at frac_bits=48"):
        choose_modulus_bits(1000, 1000.0, 48)
    with pytest.raises(ValueError, match=r"lower frac_bits \(label_bits\) or value_bound"):
        SecAggParams(frac_bits=48).validate(1000, 1000.0)


def test_encode_refuses_values_beyond_the_bound_and_non_finite_values() -> None:
    with pytest.raises(ValueError, match=r"\|x\| <= value_bound=1.0, got 1.5"):
        encode(np.array([0.0, -1.5]), 8, 16, 1.0)
    with pytest.raises(ValueError, match="finite"):
        encode(np.array([np.nan]), 8, 16, 1.0)


# --- graph ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_clients", "neighbours"), [(10, 4), (12, 5), (50, 18), (7, 6), (8, 7)])
def test_graph_is_k_regular_symmetric_and_deterministic(n_clients: int, neighbours: int) -> None:
    cohort = sorted(random.Random(n_clients).sample(range(2**62), n_clients))

    graph = neighbour_graph(cohort, neighbours, seed=42)

    assert graph == neighbour_graph(cohort, neighbours, seed=42)
    assert set(graph) == set(cohort)
    for node, peers in graph.items():
        assert len(set(peers)) == neighbours and node not in peers
        assert all(node in graph[peer] for peer in peers)
        assert neighbours_of(node, cohort, neighbours, 42) == peers


def test_graph_depends_on_the_seed() -> None:
    cohort = list(range(1, 101))

    assert neighbour_graph(cohort, 20, seed=1) != neighbour_graph(cohort, 20, seed=2)


def test_graph_defaults_and_threshold_rules() -> None:
    assert [auto_neighbours(n) for n in (3, 10, 13, 14, 50, 100, 1000)] == [
        2,
        9,
        12,
        12,
        18,
        20,
        30,
    ]
    assert [auto_threshold(k) for k in (2, 9, 20)] == [2, 6, 11]
    check_graph(100, 20, 11)
    check_graph(100, 20, 21)
    with pytest.raises(ValueError, match=r"\(k\+1\)/2 < t <= k\+1 = 21 .* got t=10"):
        check_graph(100, 20, 10)
    with pytest.raises(ValueError, match="got t=22"):
        check_graph(100, 20, 22)
    with pytest.raises(ValueError, match="no 5-regular graph exists on 11 nodes"):
        check_graph(11, 5, 4)
    with pytest.raises(ValueError, match=r"neighbours must be in \[1, 9\]"):
        check_graph(10, 10, 6)


def test_share_points_are_positions_in_the_sorted_cohort() -> None:
    assert share_points([30, 10, 20]) == {10: 1, 20: 2, 30: 3}


# --- settings -------------------------------------------------------------------------------


def test_params_validate_resolves_automatic_fields() -> None:
    params = SecAggParams().validate(100, 1.0)

    assert (params.neighbours, params.threshold) == (20, 11)
    assert params.modulus_bits == choose_modulus_bits(100, 1.0, params.frac_bits)
    params.check_resolved(100)
    assert SecAggParams(neighbours=500).validate(10, 1.0).neighbours == 9  # all-to-all
    assert SecAggParams.from_config(params.to_config()) == params


def test_params_reject_bad_settings_with_the_values() -> None:
    with pytest.raises(ValueError, match="below min_cohort=3"):
        SecAggParams().validate(2, 1.0)
    with pytest.raises(ValueError, match="got t=11"):
        SecAggParams(threshold=11).validate(10, 1.0)
    with pytest.raises(ValueError, match=r"modulus_bits must be 0 or in \[2, 64\], got 70"):
        SecAggParams(modulus_bits=70)
    with pytest.raises(ValueError, match="min_cohort must be >= 2, got 1"):
        SecAggParams(min_cohort=1)
    with pytest.raises(TypeError, match="frac_bits must be an int"):
        SecAggParams(frac_bits=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be resolved"):
        SecAggParams().check_resolved(10)
    with pytest.raises(ValueError, match=r"lack \['min_cohort'\]"):
        SecAggParams.from_config(
            {"neighbours": 1, "threshold": 2, "frac_bits": 3, "modulus_bits": 4}
        )
