"""The course models' quality protocol: reference sets, batched draws, guided accuracy."""

from __future__ import annotations

import pytest
import torch

from dlai_diffusion import evaluation
from dlai_diffusion.data import load_mnist


def test_reference_sets_are_disjoint_seeded_test_digits():
    a, b = evaluation.mnist_reference(300, seed=0, subset=True)
    again, _ = evaluation.mnist_reference(300, seed=0, subset=True)
    other, _ = evaluation.mnist_reference(300, seed=1, subset=True)
    assert a.shape == b.shape == (300, 1, 28, 28) and torch.equal(a, again)
    assert not torch.equal(a, other)
    rows = {tuple(x.flatten().tolist()) for x in a}
    assert not any(tuple(x.flatten().tolist()) in rows for x in b)
    with pytest.raises(ValueError, match="n must be"):
        evaluation.mnist_reference(600, subset=True)


def test_draw_splits_labels_with_the_batches_and_is_reproducible():
    seen = []

    def sampler(x, y):
        seen.append((x.shape[0], y.tolist()))
        return 3 * x + y.view(-1, 1, 1, 1)

    labels = torch.arange(7)
    out = evaluation.draw(sampler, 7, labels=labels, batch_size=3,
                          generator=torch.Generator().manual_seed(0), bf16=True)
    assert [n for n, _ in seen] == [3, 3, 1] and sum((y for _, y in seen), []) == list(range(7))
    assert out.shape == (7, 1, 28, 28) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    again = evaluation.draw(sampler, 7, labels=labels, batch_size=3,
                            generator=torch.Generator().manual_seed(0), bf16=True)
    assert torch.equal(out, again)


def test_accuracy_and_diversity_read_real_digits_right():
    test = load_mnist("test", subset=True)
    accuracy, diversity = evaluation.accuracy_and_diversity(test.images, test.labels)
    assert accuracy >= 0.98
    wrong, _ = evaluation.accuracy_and_diversity(test.images, (test.labels + 1) % 10)
    assert wrong < 0.05
    first = torch.stack([(test.labels == d).nonzero()[0, 0] for d in range(10)])
    copies = test.images[first].repeat_interleave(20, 0)  # no diversity at all within a class
    _, none = evaluation.accuracy_and_diversity(copies, torch.arange(10).repeat_interleave(20))
    assert none < 1e-6 < diversity
    assert evaluation.fid_against(test.images, test.images) == pytest.approx(0, abs=1e-3)
