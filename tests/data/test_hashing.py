"""Fingerprints and the near-duplicate search."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from medclassify.data import hashing
from medclassify.data.synthetic import augmented_copy as augmented
from medclassify.data.synthetic import texture_image as texture


def test_exact_hash_sees_pixels_not_files():
    a = texture(1)
    rgb = np.repeat(a[..., None], 3, axis=2)
    assert hashing.exact_hash(a) == hashing.exact_hash(rgb)  # grey stored as RGB
    b = a.copy()
    b[0, 0] ^= 1
    assert hashing.exact_hash(a) != hashing.exact_hash(b)


def test_mirror_hash_is_a_fixed_bit_flip():
    coefs = np.stack([hashing.coefficients(hashing.thumbnail(texture(s))) for s in range(20)])
    mu = hashing.dataset_mean(coefs)
    for s in range(5):
        t = hashing.thumbnail(texture(s))
        h = hashing.perceptual_hashes(hashing.coefficients(t)[None], mu)[0, hashing.CENTRE]
        hm = hashing.perceptual_hashes(hashing.coefficients(t[:, ::-1].copy())[None], mu)[0, hashing.CENTRE]
        assert int(hashing.hamming(h ^ np.uint64(hashing.MIRROR_MASK), hm)) <= 2


def brute_force(h: np.ndarray, d: int, mirror: bool):
    out = set()
    for i in range(len(h)):
        for j in range(i + 1, len(h)):
            dist = int(hashing.hamming(h[i], h[j]))
            if mirror:
                dist = min(dist, int(hashing.hamming(h[i] ^ np.uint64(hashing.MIRROR_MASK), h[j])))
            if dist <= d:
                out.add((i, j))
    return out


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), d=st.integers(0, 11), mirror=st.booleans())
def test_multi_index_search_equals_brute_force(seed, d, mirror):
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**63, 60, dtype=np.uint64)
    for k in range(20):  # plant near copies with a few bits flipped
        flips = rng.choice(64, rng.integers(0, 12), replace=False)
        h[40 + k] = h[k] ^ np.uint64(sum(1 << int(b) for b in flips))
    i, j, dist = hashing.near_pairs(h, max_distance=d, mirror=mirror)
    assert set(zip(i.tolist(), j.tolist())) == brute_force(h, d, mirror)
    assert (dist <= d).all()
    # Probed in small pieces (what bounds the memory of 100,000 alike images): the same pairs and distances.
    small = hashing.near_pairs(h, max_distance=d, mirror=mirror, chunk=3, query_chunk=7)
    assert all(np.array_equal(a, b) for a, b in zip((i, j, dist), small))


def test_augmented_copies_are_found_and_distinct_images_are_not():
    originals = [texture(s) for s in range(30)]
    copies = [augmented(originals[k], angle=(-9, -4, 3, 10)[k % 4], flip=k % 2 == 0,
                        scale=(0.8, 1.2)[k % 2], brightness=(0.8, 1.2)[k % 3 == 0]) for k in range(10)]
    thumbs = np.stack([hashing.thumbnail(a) for a in originals + copies])
    coefs = np.stack([hashing.coefficients(t) for t in thumbs])
    mu = hashing.dataset_mean(coefs)
    h = hashing.perceptual_hashes(coefs, mu)
    i, j, _ = hashing.near_pairs(h[:, hashing.CENTRE], h.ravel(), np.repeat(np.arange(len(h)), h.shape[1]))
    cos = hashing.coefficient_cosines(coefs, mu, i, j)
    corr = hashing.pair_correlations(thumbs, i, j)
    ok = (cos >= hashing.MIN_COSINE) & (corr >= hashing.MIN_CORRELATION)
    found = set(zip(i[ok].tolist(), j[ok].tolist()))
    assert found == {(k, 30 + k) for k in range(10)}
