"""slerp/lerp: endpoints, norms, the float64 reference, the parallel fall-back, dtypes, batching."""
import pytest
import torch

from interp import lerp, slerp


def reference_slerp(a, b, t):
    """The textbook formula in float64, one vector per row, no fall-back."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1)
    cos = (a * b).sum(1, keepdim=True) / (a.norm(dim=1, keepdim=True) * b.norm(dim=1, keepdim=True))
    theta = torch.acos(cos)
    return (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)


def test_endpoints_are_exact(pair):
    a, b = pair
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    out = slerp(a, b, torch.tensor([0.0, 1.0, 0.0]))
    assert torch.equal(out[0], a[0]) and torch.equal(out[1], b[1]) and torch.equal(out[2], a[2])
    assert torch.equal(lerp(a, b, 0.0), a) and torch.equal(lerp(a, b, 1.0), b)


def test_equal_norms_stay_on_the_sphere(pair):
    a, b = pair
    b = b * (a.norm() / b.norm())
    for t in torch.linspace(0, 1, 11):
        assert slerp(a, b, float(t)).norm() == pytest.approx(a.norm().item(), rel=1e-5)
    # Lerp would shrink the norm in the middle: a check that the test can tell them apart.
    assert lerp(a, b, 0.5).norm() < 0.9 * a.norm()


def test_matches_float64_reference_for_unequal_norms(pair):
    a, b = pair
    b = 3.0 * b
    t = torch.tensor([0.1, 0.5, 0.8])
    expected = reference_slerp(a, b, t).reshape(a.shape)
    torch.testing.assert_close(slerp(a, b, t).double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(slerp(a[1], b[1], 0.5).double(), reference_slerp(a[1:2], b[1:2], 0.5)[0].reshape(a[1].shape),
                               rtol=1e-5, atol=1e-5)


def test_float_t_treats_the_whole_tensor_as_one_vector(pair):
    a, b = pair
    expected = reference_slerp(a.reshape(1, -1), b.reshape(1, -1), 0.3).reshape(a.shape)
    torch.testing.assert_close(slerp(a, b, 0.3).double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_parallel_and_antiparallel_fall_back_to_lerp(pair, sign):
    a = pair[0]
    b = sign * 2.0 * a
    for t in (0.25, 0.5, 0.75):
        out = slerp(a, b, t)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, lerp(a, b, t))
    nearly = a + 1e-3 * pair[1]  # |cos| just below 1
    torch.testing.assert_close(slerp(a, nearly, 0.5), lerp(a, nearly, 0.5))


def test_zero_vectors_fall_back_to_lerp(pair):
    a = pair[0]
    zero = torch.zeros_like(a)
    torch.testing.assert_close(slerp(a, zero, 0.25), 0.75 * a)
    assert torch.equal(slerp(zero, zero, 0.5), zero)


def test_zero_vectors_have_finite_gradients(pair):
    a = pair[0].clone().requires_grad_()
    for b in (torch.zeros_like(a), a.detach()):
        slerp(a, b, 0.5).sum().backward()
        assert torch.isfinite(a.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_is_computed_in_float32(pair, dtype):
    a, b = (x.to(dtype) for x in pair)
    t = torch.tensor([0.2, 0.5, 0.9])
    out = slerp(a, b, t)
    assert out.dtype == dtype
    assert torch.equal(out, slerp(a.float(), b.float(), t).to(dtype))
    assert lerp(a, b, t).dtype == dtype


def test_float64_stays_float64(pair):
    a, b = (x.double() for x in pair)
    out = slerp(a, b, 0.4)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, reference_slerp(a.reshape(1, -1), b.reshape(1, -1), 0.4).reshape(a.shape))


def test_batched_t_interpolates_each_row_separately(pair):
    a, b = pair
    t = torch.tensor([0.1, 0.5, 0.7])
    out = slerp(a, b, t)
    for i in range(3):
        torch.testing.assert_close(out[i], slerp(a[i], b[i], float(t[i])))


def test_broadcasting(pair):
    a, b = pair
    t = torch.tensor([0.0, 0.3, 1.0])
    # One pair at three positions.
    out = slerp(a[:1], b[:1], t)
    assert out.shape == a.shape
    torch.testing.assert_close(out[1], slerp(a[0], b[0], 0.3))
    assert torch.equal(out[2], b[0])
    # One shared end (e.g. a fixed text embedding) against a batch.
    out = slerp(a[:1], b, t)
    torch.testing.assert_close(out[1], slerp(a[0], b[1], 0.3))
    poses = lerp(torch.zeros(1, 18, 2), torch.ones(1, 18, 2), t)
    torch.testing.assert_close(poses[:, 0, 0], t)


def test_rejects_matrix_t(pair):
    with pytest.raises(ValueError):
        slerp(*pair, torch.zeros(3, 1))
