"""LPIPS / FID-Inception: parity with the PyTorch references on random weights, converters, FID,
errors.

Everything torch runs on CPU; nothing is downloaded (TORCH_HOME is a temporary folder and the
download function is replaced by one that fails the test).
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from PIL import Image
from skimage import data

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
lpips_ref = pytest.importorskip("lpips")

from rdbm_jax.errors import ConfigError, DataError  # noqa: E402
from rdbm_jax.evaluation.perceptual import (  # noqa: E402
    convert, fid, make_inception, make_lpips, weights)
from rdbm_jax.evaluation.perceptual.inception import resize_bilinear  # noqa: E402
from rdbm_jax.evaluation.perceptual.inception import (  # noqa: E402
    variable_shapes as inception_shapes)
from rdbm_jax.evaluation.perceptual.lpips import variable_shapes  # noqa: E402
from tests.helpers import fid_tolerance, statistics_tolerance  # noqa: E402

LPIPS_WEIGHTS = os.path.join(os.path.dirname(lpips_ref.__file__), "weights", "v0.1")


def pytorch_fid():
    """(pytorch_fid.inception, pytorch_fid.fid_score), or skip the FID references (`pip install
    pytorch-fid`)."""
    return (pytest.importorskip("pytorch_fid.inception"),
            pytest.importorskip("pytorch_fid.fid_score"))


@pytest.fixture(scope="module", autouse=True)
def no_downloads(tmp_path_factory):
    """TORCH_HOME in a temporary folder and any download attempt an error; nothing lands there."""
    home = tmp_path_factory.mktemp("torch_home")
    mp = pytest.MonkeyPatch()
    mp.setenv("TORCH_HOME", str(home))

    def refuse(url, *args, **kwargs):
        raise AssertionError(f"test tried to download {url}")

    mp.setattr(torch.hub, "download_url_to_file", refuse)
    torch.manual_seed(0)
    yield
    mp.undo()
    assert not any(f.is_file() for f in home.rglob("*")), "something was downloaded"


def to_nchw(x: np.ndarray) -> "torch.Tensor":
    """[B, H, W, C] numpy -> [B, C, H, W] torch."""
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)


def lpips_pairs(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Three image pairs in [-1, 1]: photo vs. light noise, photo vs. heavy noise, random vs.
    random."""
    rng = np.random.default_rng(1)
    photo = data.astronaut()[100:100 + h, 150:150 + w].astype(np.float32) / 127.5 - 1
    a = np.stack([photo, photo, rng.uniform(-1, 1, photo.shape)])
    b = np.stack([photo + rng.normal(0, 0.05, photo.shape), photo + rng.normal(0, 0.4, photo.shape),
                  rng.uniform(-1, 1, photo.shape)])
    return a.astype(np.float32), np.clip(b, -1, 1).astype(np.float32)


def he_init_(module: "torch.nn.Module", seed: int) -> None:
    """He-normal conv weights and small random biases, so that deep random features still depend on
    the input (torchvision's default init leaves Inception's pool3 nearly input-independent)."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=g)
            if m.bias is not None:
                m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1


def torch_lpips(net: str) -> "torch.nn.Module":
    """lpips' own LPIPS v0.1 with its shipped linear heads and a random (torchvision) backbone."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecated `pretrained=False`
        return lpips_ref.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False).eval()


def test_lpips_alex_matches_torch_via_cli(tmp_path):
    backbone = torchvision.models.alexnet(weights=None)
    he_init_(backbone, seed=5)
    ref = torch_lpips("alex")
    slices = [getattr(ref.net, f"slice{k}") for k in range(1, 6)]
    for s in slices:  # lpips keeps torchvision's `features` indices as module names
        for name, module in s.named_children():
            module.load_state_dict(backbone.features[int(name)].state_dict())
    sd = {f"features.{k}": v for k, v in backbone.features.state_dict().items()}
    sd["classifier.1.bias"] = backbone.classifier[1].bias  # ignored by the converter
    torch.save(sd, tmp_path / "alexnet.pth")
    out = tmp_path / "lpips_alex.npz"
    rc = convert.main(["lpips", "--net", "alex", "--torch-backbone", str(tmp_path / "alexnet.pth"),
                       "--torch-lin", os.path.join(LPIPS_WEIGHTS, "alex.pth"), "--out", str(out)])
    assert rc == 0
    a, b = lpips_pairs(64, 80)
    ours = np.asarray(make_lpips(str(out), "alex")(a, b))
    with torch.no_grad():
        theirs = ref(to_nchw(a), to_nchw(b)).flatten().numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    assert ours.shape == (3,) and 0 < 2 * ours[0] < ours[1]  # more noise, clearly larger distance
    assert np.allclose(np.asarray(make_lpips(str(out), "alex")(a, a)), 0.0, atol=1e-7)


def test_lpips_vgg_matches_torch_lpips_names(tmp_path):
    ref = torch_lpips("vgg")  # backbone: torchvision vgg16(weights=None), randomly initialised
    he_init_(ref.net, seed=6)  # (torchvision zeroes VGG's conv biases: make them count)
    backbone = {f"net.{k}": v for k, v in ref.net.state_dict().items()}  # lpips' own key names
    lin = torch.load(os.path.join(LPIPS_WEIGHTS, "vgg.pth"), map_location="cpu", weights_only=True)
    path = str(tmp_path / "lpips_vgg.npz")
    weights.save_npz(path, convert.convert_lpips(backbone, lin, "vgg"))
    a, b = lpips_pairs(64, 64)
    ours = np.asarray(make_lpips(path, "vgg")(a, b))
    with torch.no_grad():
        theirs = ref(to_nchw(a), to_nchw(b)).flatten().numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    with pytest.raises(ConfigError, match="eval.lpips_net"):
        make_lpips(path, "alex")  # the file holds VGG weights


def fid_inception_random() -> "torch.nn.Module":
    """pytorch-fid's `fid_inception_v3` construction body without its download, random weights."""
    pfi, _ = pytorch_fid()
    inc = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None,
                                          init_weights=False)
    inc.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    inc.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    inc.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    inc.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    inc.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    inc.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    inc.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    inc.Mixed_7b = pfi.FIDInceptionE_1(1280)
    inc.Mixed_7c = pfi.FIDInceptionE_2(2048)
    he_init_(inc, seed=7)
    g = torch.Generator().manual_seed(1)
    for m in inc.modules():  # non-trivial BatchNorm statistics, so that they are really tested
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=g) * 0.4 + 0.8
            m.bias.data = torch.randn(c, generator=g) * 0.1
            m.running_mean.data = torch.randn(c, generator=g) * 0.1
            m.running_var.data = torch.rand(c, generator=g) * 0.4 + 0.8
    return inc


@pytest.fixture(scope="module")
def fid_setup(tmp_path_factory):
    """(pytorch-fid InceptionV3 reference, converted .npz path, raw Inception3 module)."""
    pfi, _ = pytorch_fid()
    inc = fid_inception_random()
    mp = pytest.MonkeyPatch()
    mp.setattr(pfi, "fid_inception_v3", lambda: inc)  # the wrapper builds on our random network
    ref = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    mp.undo()
    folder = tmp_path_factory.mktemp("inception")
    torch.save(inc.state_dict(), folder / "pt_inception.pth")
    out = str(folder / "inception_fid.npz")
    assert convert.main(["inception", "--torch",
                         str(folder / "pt_inception.pth"), "--out", out]) == 0
    return ref, out, inc


def test_inception_features_match_pytorch_fid(fid_setup):
    ref, path, _ = fid_setup
    rng = np.random.default_rng(2)
    photo = data.coffee()[50:349, 200:499].astype(np.float32) / 255.0
    # [2, 299, 299, 3]: the shape the FID CLI test compiles too (resizing is tested on its own below
    # and, through pytorch-fid's own resize, by the CLI test)
    x = np.stack([photo, rng.uniform(0, 1, photo.shape).astype(np.float32)])
    ours = np.asarray(make_inception(path)(x))
    with torch.no_grad():
        theirs = ref(to_nchw(x))[0].flatten(1).numpy()
    assert ours.shape == (2, 2048)
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(theirs).max()
    assert np.abs(theirs[0] - theirs[1]).max() > 0.1 * np.abs(theirs).max()  # inputs do matter


@pytest.mark.parametrize("size", [(120, 170), (400, 333), (299, 299), (7, 512)])
def test_resize_matches_torch_interpolate(size):
    x = np.random.default_rng(3).uniform(0, 1, (1,) + size + (3,)).astype(np.float32)
    ours = np.asarray(resize_bilinear(x))
    theirs = torch.nn.functional.interpolate(to_nchw(x), size=(299, 299), mode="bilinear",
                                             align_corners=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_inception_converter_accepts_pytorch_fid_wrapper_names(fid_setup):
    ref, _, inc = fid_setup
    direct = convert.convert_inception(inc.state_dict())
    wrapped = convert.convert_inception(ref.state_dict())  # keys blocks.I.J.*
    assert sorted(direct) == sorted(wrapped)
    for k in direct:
        np.testing.assert_array_equal(direct[k], wrapped[k])
    with pytest.raises(DataError, match="unexpected key"):
        convert.convert_inception({**inc.state_dict(), "Mixed_5b.extra.weight": torch.zeros(1)})
    sd = dict(inc.state_dict())
    del sd["Mixed_6e.branch_pool.bn.running_var"]
    with pytest.raises(DataError, match="missing 1 arrays"):
        convert.convert_inception(sd)


def test_fid_cli_statistics_match_pytorch_fid(fid_setup, tmp_path):
    ref, path, _ = fid_setup
    folder = tmp_path / "ref_images"
    folder.mkdir()
    Image.fromarray(data.astronaut()[:120, :170]).save(folder / "a.png")
    Image.fromarray(data.chelsea()[:90, :64]).save(folder / "b.png")  # another size
    out = tmp_path / "stats.npz"
    assert fid.main(["--weights", path, "--folder", str(folder), "--out", str(out),
                     "--batch-size", "2"]) == 0
    mu, sigma = fid.load_stats(str(out))
    files = sorted(str(p) for p in folder.iterdir())
    _, pfs = pytorch_fid()
    ref_mu, ref_sigma = pfs.calculate_activation_statistics(files, ref, batch_size=1, dims=2048,
                                                            device="cpu", num_workers=0)
    scale = np.abs(ref_mu).max()
    assert np.abs(mu - ref_mu).max() <= 1e-4 * scale
    assert np.abs(sigma - ref_sigma).max() <= 1e-4 * np.abs(ref_sigma).max()


@pytest.mark.parametrize("n,d", [(200, 16), (5, 16), (40, 64)])
def test_frechet_distance_matches_pytorch_fid(n, d):
    rng = np.random.default_rng(n + d)
    m1, s1 = fid.compute_statistics(rng.normal(size=(n, d)))
    m2, s2 = fid.compute_statistics(rng.normal(size=(n, d)) * 1.3 + 0.2)
    _, pfs = pytorch_fid()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pytorch-fid's deprecated sqrtm(disp=False)
        theirs = pfs.calculate_frechet_distance(m1, s1, m2, s2)
    # (5, 16): rank-4 covariances, where sqrtm's round-off shows as its square root
    assert fid.frechet_distance(m1, s1, m2, s2) == pytest.approx(
        theirs, rel=0, abs=fid_tolerance(m1, s1, m2, s2, n))
    assert fid.frechet_distance(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-6 * np.trace(s1))


def test_fid_golden_values_and_fallback(monkeypatch):
    mu, sigma = fid.compute_statistics(np.array([[0.0, 0.0], [2.0, 2.0]]))
    np.testing.assert_allclose(mu, [1.0, 1.0])
    np.testing.assert_allclose(sigma, [[2.0, 2.0], [2.0, 2.0]])  # N-1 normalisation
    # 1-d Gaussians: FID = (m1 - m2)² + (sd1 - sd2)² = 1 + 1
    assert fid.frechet_distance(np.array([0.0]), np.array([[4.0]]), np.array([1.0]),
                                np.array([[1.0]])) == pytest.approx(2.0, abs=1e-12)
    calls = []
    real = fid._sqrtm

    def flaky(a):
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else real(a)

    monkeypatch.setattr(fid, "_sqrtm", flaky)
    s = np.diag([1.0, 2.0])
    # after the fallback sqrt((S + eps I)²) = S + eps I, so FID = 2 tr S - 2 tr(S + eps I) = -2 d
    # eps
    assert fid.frechet_distance(np.zeros(2), s, np.zeros(2), s,
                                eps=1e-3) == pytest.approx(-4e-3, abs=1e-12)
    np.testing.assert_allclose(calls[1], (s + 1e-3 * np.eye(2)) @ (s + 1e-3 * np.eye(2)))
    with pytest.raises(ValueError, match="need features"):
        fid.compute_statistics(np.zeros((1, 4)))


def test_stats_roundtrip_and_errors(tmp_path):
    rng = np.random.default_rng(4)
    mu, sigma = fid.compute_statistics(rng.normal(size=(10, 3)))
    fid.save_stats(str(tmp_path / "s.npz"), mu, sigma)
    mu2, sigma2 = fid.load_stats(str(tmp_path / "s.npz"))
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)
    with pytest.raises(DataError, match=r"missing\.npz \(eval\.fid_ref_stats\)"):
        fid.load_stats(str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "bad.npz", mu=mu)
    with pytest.raises(DataError, match="lacks 'mu'/'sigma'.*eval.fid_ref_stats"):
        fid.load_stats(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "shape.npz", mu=mu, sigma=sigma[:2])
    with pytest.raises(DataError, match="expected \\[D\\] and"):
        fid.load_stats(str(tmp_path / "shape.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable"):
        fid.load_stats(str(tmp_path / "junk.npz"))


def _zero_npz(path: str, kind: str, shapes: dict[str, tuple[int, ...]],
              net: str) -> dict[str, np.ndarray]:
    """A structurally valid converted .npz (zeros), made without torch."""
    flat = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    flat.update({"meta/kind": np.array(kind), "meta/net": np.array(net)})
    weights.save_npz(path, flat)
    return flat


def test_weight_file_errors(tmp_path):
    inception_npz = str(tmp_path / "inception.npz")
    _zero_npz(inception_npz, "inception", inception_shapes(), "inception_v3_fid")
    assert make_inception(inception_npz) is not None  # a well-formed file loads
    assert make_lpips("", "alex") is None and make_inception("") is None  # metric unavailable
    missing = str(tmp_path / "nope.npz")
    with pytest.raises(DataError, match=r"nope\.npz \(eval\.lpips_weights\)"):
        make_lpips(missing, "alex")
    with pytest.raises(DataError, match=r"nope\.npz \(eval\.fid_weights\)"):
        make_inception(missing)
    with pytest.raises(DataError,
                       match="expected lpips weights.*found inception.*eval.lpips_weights"):
        make_lpips(inception_npz, "alex")
    with pytest.raises(ConfigError, match="eval.lpips_net"):
        make_lpips(inception_npz, "squeeze")
    good = str(tmp_path / "alex.npz")
    flat = _zero_npz(good, "lpips", variable_shapes("alex"), "alex")
    assert make_lpips(good, "alex") is not None
    with pytest.raises(DataError, match="expected inception weights.*eval.fid_weights"):
        make_inception(good)
    flat["params/lin2/kernel"] = np.zeros((1, 1, 7, 1), np.float32)
    weights.save_npz(str(tmp_path / "shape.npz"), flat)
    with pytest.raises(DataError, match=r"shape\.npz.*wrong shape, e\.g\. params/lin2/kernel"):
        make_lpips(str(tmp_path / "shape.npz"), "alex")
    (tmp_path / "junk.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"not a readable \.npz.*junk\.npz \(eval\.lpips_weights\)"):
        make_lpips(str(tmp_path / "junk.npz"), "alex")
    with pytest.raises(ValueError, match="one shape"):
        make_lpips(good, "alex")(np.zeros((1, 64, 64, 3)), np.zeros((1, 64, 32, 3)))


def test_converter_cli_errors(tmp_path, capsys):
    out = str(tmp_path / "o.npz")
    rc = convert.main(["inception", "--torch", str(tmp_path / "none.pth"), "--out", out])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "none.pth (--torch)" in err and len(err.splitlines()) == 1
    alex = torchvision.models.alexnet(weights=None).features.state_dict()
    torch.save({f"features.{k}": v for k, v in alex.items()}, tmp_path / "alex.pth")
    rc = convert.main(["lpips", "--net", "vgg", "--torch-backbone", str(tmp_path / "alex.pth"),
                       "--torch-lin", os.path.join(LPIPS_WEIGHTS, "vgg.pth"), "--out", out])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "alex.pth" in err and len(err.splitlines()) == 1
    assert not os.path.exists(out)
    (tmp_path / "junk.pth").write_bytes(b"garbage")
    rc = convert.main(["lpips", "--torch-backbone", str(tmp_path / "junk.pth"),
                       "--torch-lin", os.path.join(LPIPS_WEIGHTS, "alex.pth"), "--out", out])
    assert rc == 1 and "junk.pth (--torch-backbone)" in capsys.readouterr().err


def test_running_stats_match_the_stored_features_and_do_not_grow():
    """Streaming FID statistics (batches of any size, pool3-like positive offset) equal
    `compute_statistics` on every feature stored, and hold O(D²) whatever N."""
    rng = np.random.default_rng(7)
    d = 32
    a = np.abs(rng.normal(size=(301, d))) * 0.4 + 3.0  # a shared large mean, as Inception's
    b = np.abs(rng.normal(size=(240, d))) * 0.5 + 3.1
    stats_a, stats_b = fid.RunningStats(), fid.RunningStats()
    for part in np.split(a, [1, 2, 9, 60, 250]):  # batch sizes 1, 1, 7, 51, 190, 51
        stats_a.add(part)
    for row in b:
        stats_b.add(row)  # one [D] vector at a time
    mu, sigma = fid.compute_statistics(a)
    mean_tol, cov_tol = statistics_tolerance(a)  # float64 round-off of the two summation orders
    np.testing.assert_allclose(stats_a.statistics()[0], mu, rtol=0, atol=mean_tol)
    np.testing.assert_allclose(stats_a.statistics()[1], sigma, rtol=0, atol=cov_tol)
    mean_b, sigma_b = fid.compute_statistics(b)
    stored = fid.frechet_distance(mu, sigma, mean_b, sigma_b)
    assert fid.frechet_distance(*stats_a.statistics(), *stats_b.statistics()) == pytest.approx(
        stored, rel=0, abs=fid_tolerance(mu, sigma, mean_b, sigma_b, max(len(a), len(b))))
    assert stats_a.n == 301 and stats_a.mean.size + stats_a.scatter.size == d + d * d
    stats_a.add(np.zeros((0, d)))  # an empty batch changes nothing
    assert stats_a.n == 301
    with pytest.raises(ValueError, match="dimension 4 added to statistics of dimension 32"):
        stats_a.add(np.zeros((2, 4)))
    one = fid.RunningStats()
    one.add(a[:1])
    with pytest.raises(ValueError, match="need features"):
        one.statistics()
