"""The deep harmonizers (cyclegan, stylemapper) on tiny phantoms with tiny networks.

The phantoms are those of the histogram tests (two "scanners" that differ in gain and
contrast). Networks are a few hundred parameters trained for a few steps: these tests check
the contracts (shapes, one mapping for every phase, determinism, persistence, refusals,
resume), not quality.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from harmonizers import stylemapper, training
from harmonizers.acquisition import Acquisition
from harmonizers.base import Harmonizer, ModelError
from harmonizers.cyclegan import CycleGANConfig, CycleGANHarmonizer
from harmonizers.domain import ScannerDomain
from harmonizers.model_store import save_model
from harmonizers.nets import (
    DEVICE_ENV,
    ENHANCEMENT_FLOOR,
    TISSUE_LEVEL,
    X_MAX,
    bounded_log_gain,
    harmonize_phases,
    inference_device,
    initial_slope_logits,
    monotone_transfer,
    native_tissue_quantiles,
    series_scale,
)
from harmonizers.registry import harmonizer_class, load_model
from harmonizers.sharpness import UnsharpFilter, fit_unsharp, radial_log_spectrum
from harmonizers.stylemapper import StyleMapperConfig, StyleMapperHarmonizer
from harmonizers.train import main as train_main
from tests.test_harmonizer_histogram import intrinsic, scan, source_scan, target_scan
from tests.test_harmonizer_train import write_dicom

# 1 mm phantom pixels on a 1 mm working grid: 40 x 48 working pixels.
CYCLE = CycleGANConfig(steps=4, batch=2, crop=24, width=4, blocks=1, knots=8, work_mm=1.0)
STYLE = StyleMapperConfig(steps=4, batch=2, crop=24, width=4, blocks=1, style_dim=4, knots=8,
                          work_mm=1.0)
OTHER = ScannerDomain("PHILIPS", 1.5)
METHODS = ("cyclegan", "stylemapper")
# Inference devices to check: the CPU always, a GPU where torch sees one.
DEVICES = ("cpu", *(("cuda",) if torch.cuda.is_available() else ()))


def other_scan(seed: int) -> Acquisition:
    return scan(intrinsic(seed)[0], gain=3.0, gamma=1.3, domain=OTHER, seed=seed + 700)


def fit(method: str, lr: float | None = None, checkpoint: Path | None = None,
        on_step: Callable[[int, dict[str, float]], None] | None = None) -> Harmonizer:
    """Fit a tiny model of ``method`` on two source and two target phantoms."""
    source = [source_scan(10, 0.7), source_scan(11, 2.0)]
    target = [target_scan(12), target_scan(13)]
    if method == "cyclegan":
        cycle = CYCLE if lr is None else dataclasses.replace(CYCLE, lr=lr)
        return CycleGANHarmonizer.fit(source, target, config=cycle, checkpoint=checkpoint,
                                      on_step=on_step)
    style = STYLE if lr is None else dataclasses.replace(STYLE, lr=lr)
    return StyleMapperHarmonizer.fit(source, target, config=style, others=[[other_scan(14)]],
                                     checkpoint=checkpoint, on_step=on_step)


@pytest.fixture(scope="module", params=METHODS)
def fitted(request: pytest.FixtureRequest) -> Harmonizer:
    """A fitted model whose gain is made far from uniform (random head and transfer)."""
    harmonizer = fit(request.param)
    generator = harmonizer.generator  # type: ignore[attr-defined]
    torch.manual_seed(5)
    with torch.no_grad():
        for name, param in generator.named_parameters():
            if "head" in name or "transfer" in name:
                param.copy_(torch.randn_like(param))
    return harmonizer


def test_harmonizes_a_tiny_acquisition(fitted: Harmonizer) -> None:
    acq = source_scan(20, 1.3)
    out = fitted.harmonize(acq)
    assert out.shape == acq.pixels.shape and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0
    # A real mapping, not a copy: the per-voxel gain varies over the image.
    ratio = out[0][acq.pixels[0] > 50] / acq.pixels[0][acq.pixels[0] > 50]
    assert ratio.std() > 0.01 * ratio.mean()


def test_one_mapping_serves_every_phase(fitted: Harmonizer) -> None:
    acq = source_scan(21, 1.0)
    # A last phase equal to the pre-contrast must come out equal to it (to float32
    # rounding of the tabulated signal equation).
    pixels = np.concatenate([acq.pixels, acq.pixels[:1]])
    times = (*acq.phase_times_s, acq.phase_times_s[-1] + 60.0)
    out = fitted.harmonize(dataclasses.replace(acq, pixels=pixels, phase_times_s=times))
    np.testing.assert_allclose(out[-1], out[0], rtol=1e-5)
    assert not np.array_equal(out[1], out[0])


def test_each_voxel_curve_keeps_its_order(fitted: Harmonizer) -> None:
    sharp = fitted.with_sharpening(UnsharpFilter(1.5, 1.0))  # type: ignore[attr-defined]
    acq = source_scan(21, 1.0)
    out = sharp.harmonize(acq).astype(np.float64)
    pixels = acq.pixels.astype(np.float64)
    tissue = pixels[0] > 0.05 * pixels[0].max()
    rise_in = pixels[1, tissue] - pixels[0, tissue]
    rise_out = out[1, tissue] - out[0, tissue]
    clear = np.abs(rise_in) > 1e-3 * pixels[0, tissue]
    assert clear.sum() > 100 and (rise_in[clear] > 0).any()  # the lesion enhances
    np.testing.assert_array_equal(np.sign(rise_out[clear]), np.sign(rise_in[clear]))


def test_sharpening_sharpens_enhancement_within_bounds_and_never_blurs_it(
    fitted: Harmonizer,
) -> None:
    acq = source_scan(25, 1.0)
    plain = fitted.with_sharpening(UnsharpFilter()).harmonize(acq)  # type: ignore[attr-defined]
    bright = plain.min(0) > 0.2 * np.median(plain[0][plain[0] > 0])

    def rise(out: np.ndarray) -> np.ndarray:
        return out[1:, bright].astype(np.float64) / out[0, bright] - 1

    # A sharpening filter: the pre-contrast by one gain per voxel, and each phase's rise
    # by a gain per voxel and phase held in [1/2, 2] (so rising stays rising).
    sharp = fitted.with_sharpening(UnsharpFilter(0.8, 1.0)).harmonize(acq)  # type: ignore[attr-defined]
    image_gain = sharp[0, bright].astype(np.float64) / plain[0, bright]
    assert image_gain.std() > 0.01 * image_gain.mean()
    clear = np.abs(rise(plain)) > 0.1
    rise_gain = rise(sharp)[clear] / rise(plain)[clear]
    assert clear.sum() > 50 and rise_gain.min() >= 0.5 - 1e-4 and rise_gain.max() <= 2 + 1e-4
    assert rise_gain.std() > 0.01
    # A blurring filter (a source sharper than the target) filters the image only: each
    # voxel's percent enhancement stays the unsharpened mapping's.
    blur = fitted.with_sharpening(UnsharpFilter(-0.5, 1.0)).harmonize(acq)  # type: ignore[attr-defined]
    np.testing.assert_allclose(rise(blur), rise(plain), rtol=1e-4, atol=1e-5)
    assert not np.allclose(blur[0], plain[0], rtol=1e-3)


def test_every_voxel_enhances_as_the_signal_equation_says(fitted: Harmonizer) -> None:
    # The networks and the filter shape the pre-contrast; each voxel's percent enhancement
    # is the SPGR re-synthesis at the target's protocol (TR, flip angle, field, r1), not
    # the source's, and not a transfer of each phase's own value.
    shaded = fitted.with_sharpening(UnsharpFilter())  # type: ignore[attr-defined]
    acq = source_scan(27, 1.0)
    out = shaded.harmonize(acq).astype(np.float64)
    factors = shaded.kinetics.resynthesis(acq).enhancement(acq.pixels).astype(np.float64)
    bright = acq.pixels[0] > 0.3 * acq.pixels[0].max()
    np.testing.assert_allclose(out[:, bright] / out[0, bright], factors[:, bright], rtol=1e-4)
    lesion = intrinsic(27)[1]
    source_pe = acq.pixels[1, lesion].mean() / acq.pixels[0, lesion].mean() - 1
    out_pe = out[1, lesion].mean() / out[0, lesion].mean() - 1
    assert abs(out_pe - source_pe) > 0.05 * source_pe  # 1.5 T gamma 1.6 -> 3 T changes it


@pytest.mark.parametrize("device", DEVICES)
def test_shared_gain_is_the_filter_on_the_mean_over_phases(device: str) -> None:
    # With an identity transfer, no shading field and each phase's own ratio to the
    # pre-contrast as its enhancement, the mapped series is x / scale, so the expected
    # output can be written down: its pre-contrast times the filter's shared gain of its
    # mean over phases, times each phase's rise sharpened by its bounded gain, brought to
    # the target scale. On a GPU, the same within rounding.
    acq = source_scan(26, 1.0)
    sharpening = UnsharpFilter(1.2, 0.7)
    out = harmonize_phases(
        acq, method="test", work_mm=1.0,
        log_gain=lambda stacks, size: torch.zeros(stacks.shape[0], 1, *size,
                                                  device=stacks.device),
        logits=initial_slope_logits(8).to(device),
        enhancement=lambda _: lambda block: np.maximum(block, 1e-6) / np.maximum(block[0], 1e-6),
        sharpening=sharpening,
        target_scale=100.0, device=torch.device(device))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    mapped = np.maximum(acq.pixels, 0) / np.float32(series_scale(acq.pre_contrast))
    gain = sharpening.shared_gain(torch.from_numpy(mapped.mean(0)), TISSUE_LEVEL).numpy()
    rise = np.maximum(acq.pixels, 1e-6) / np.maximum(acq.pixels[0], 1e-6) - 1
    rise_gain = sharpening.shared_gain(torch.from_numpy(rise), ENHANCEMENT_FLOOR).numpy()
    expected = mapped[0] * gain * np.maximum(1 + rise * rise_gain, 0)
    expected *= 100.0 / series_scale(expected[0])
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    assert not np.allclose(gain, 1.0, atol=0.05)


def test_inference_is_deterministic(fitted: Harmonizer) -> None:
    acq = source_scan(22, 1.0)
    np.testing.assert_array_equal(fitted.harmonize(acq), fitted.harmonize(acq))


def test_inference_device_is_chosen_and_can_be_forced(
    fitted: Harmonizer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert inference_device() == torch.device("cpu")
    name = f"{fitted.method}-ge-1.5t_to_siemens-3t"
    save_model(fitted, tmp_path / name, training_data="phantoms", training_command="pytest")
    loaded = load_model(fitted.method, name, root=tmp_path).harmonizer
    assert loaded.device == torch.device("cpu")  # type: ignore[attr-defined]
    # A device the machine cannot give is a clear refusal, not "invalid weights".
    monkeypatch.setenv(DEVICE_ENV, "abacus")
    with pytest.raises(ModelError, match="unknown inference device 'abacus'"):
        load_model(fitted.method, name, root=tmp_path)
    monkeypatch.delenv(DEVICE_ENV)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert inference_device().type == expected
    with pytest.raises(ModelError, match="unknown inference device"):
        inference_device("abacus")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no CUDA GPU"):
            inference_device("cuda")
    # A copy on another device leaves the model as it was and maps the same on the CPU.
    on_cpu = fitted.on("cpu")  # type: ignore[attr-defined]
    assert on_cpu.generator is not fitted.generator  # type: ignore[attr-defined]
    assert next(on_cpu.generator.parameters()).device.type == "cpu"
    acq = source_scan(22, 1.0)
    out = on_cpu.harmonize(acq)
    assert out.dtype == np.float32 and isinstance(out, np.ndarray)
    if fitted.device.type == "cpu":  # type: ignore[attr-defined]
        np.testing.assert_array_equal(out, fitted.harmonize(acq))
    if torch.cuda.is_available():  # the GPU maps as the CPU does, within rounding
        on_gpu = fitted.on("cuda").harmonize(acq)  # type: ignore[attr-defined]
        np.testing.assert_allclose(on_gpu, out, rtol=1e-4, atol=1e-4 * float(out.max()))


def test_single_slice_is_supported(fitted: Harmonizer) -> None:
    acq = source_scan(23, 1.0)
    one = dataclasses.replace(acq, pixels=np.ascontiguousarray(acq.pixels[:, 3:4]))
    out = fitted.harmonize(one)
    assert out.shape == one.pixels.shape and np.isfinite(out).all()


@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip_through_the_registry(method: str, tmp_path: Path) -> None:
    harmonizer = fit(method)
    name = f"{method}-ge-1.5t_to_siemens-3t"
    card = save_model(harmonizer, tmp_path / name, training_data="phantoms",
                      training_command="pytest")
    loaded = load_model(method, name, root=tmp_path)
    assert loaded.sha256 == card.sha256
    assert (loaded.card["source_domain"], loaded.card["target_domain"]) == (
        "ge-1.5t", "siemens-3t")
    acq = source_scan(24, 1.0)
    np.testing.assert_array_equal(loaded.harmonizer.harmonize(acq), harmonizer.harmonize(acq))
    assert loaded.harmonizer.sharpening == harmonizer.sharpening  # type: ignore[attr-defined]
    # The other deep method cannot load it, and tampering is caught by the card's sha256.
    other = next(m for m in METHODS if m != method)
    with pytest.raises(ModelError, match="model, not"):
        load_model(other, name, root=tmp_path)
    weights = tmp_path / name / harmonizer.weights_file
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    with pytest.raises(ModelError, match="sha256"):
        load_model(method, name, root=tmp_path)


@pytest.mark.parametrize("method", METHODS)
def test_garbage_weights_are_refused(method: str, tmp_path: Path) -> None:
    cls = harmonizer_class(method)
    (tmp_path / cls.weights_file).write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable torch weights file"):
        cls.load(tmp_path)


def test_registry_refuses_unknown_methods(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="unknown harmonization method 'munit'"):
        harmonizer_class("munit")
    with pytest.raises(ModelError, match="unknown harmonization method"):
        load_model("CycleGAN", "cyclegan-ge-1.5t_to_siemens-3t", root=tmp_path)
    with pytest.raises(ModelError, match="no model"):
        load_model("cyclegan", "cyclegan-nowhere", root=tmp_path)


def test_bad_input_is_refused_clearly(fitted: Harmonizer) -> None:
    """ModelError, which the node turns into a quarantine with the reason."""
    acq = source_scan(25, 1.0)
    nan = acq.pixels.copy()
    nan[1, 2, 3, 4] = np.nan
    with pytest.raises(ModelError, match="NaN"):
        fitted.harmonize(dataclasses.replace(acq, pixels=nan))
    with pytest.raises(ModelError, match="post-contrast phase"):
        fitted.harmonize(dataclasses.replace(acq, pixels=acq.pixels[:1], phase_times_s=(0.0,)))
    with pytest.raises(TypeError, match="Acquisition"):
        fitted.harmonize(acq.pixels[0, 0])
    with pytest.raises(ModelError, match="pixel spacing"):
        fitted.harmonize(dataclasses.replace(acq, spacing_mm=(2.0, 0.0, 1.0)))
    with pytest.raises(ModelError, match="coarser than this model"):
        fitted.harmonize(dataclasses.replace(acq, spacing_mm=(2.0, 3.0, 3.0)))
    with pytest.raises(ModelError, match="field of view"):
        small = np.ascontiguousarray(acq.pixels[:, :, :10, :10])
        fitted.harmonize(dataclasses.replace(acq, pixels=small))
    with pytest.raises(ValueError, match="phase times"):
        Acquisition(pixels=acq.pixels, spacing_mm=acq.spacing_mm, phase_times_s=(0.0, 1.0))
    # The enhancement is re-synthesized from the series' protocol, so it must be known.
    with pytest.raises(ModelError, match="flip angle"):
        fitted.harmonize(dataclasses.replace(acq, flip_angle_deg=None))
    with pytest.raises(ModelError, match="field strength"):
        fitted.harmonize(dataclasses.replace(acq, domain=None))


@pytest.mark.parametrize("method", METHODS)
def test_training_refuses_mixed_or_bad_sides(method: str) -> None:
    cls = harmonizer_class(method)
    with pytest.raises(ValueError, match="mix scanner domains"):
        cls.fit([source_scan(30, 1.0), target_scan(31)], [target_scan(32)])
    bad = source_scan(33, 1.0)
    bad.pixels[0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        cls.fit([bad], [target_scan(34)])


@pytest.mark.parametrize("method", METHODS)
def test_training_resumes_from_a_checkpoint(
    method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On the CPU, where training is bit for bit repeatable; on a GPU two uninterrupted runs
    # already differ (cuDNN's backward passes sum in no fixed order; 1e-4 for stylemapper).
    monkeypatch.setattr(training, "training_device", lambda: torch.device("cpu"))
    checkpoint = tmp_path / "checkpoint.pt"
    stop_at = 2

    def interrupt(step: int, losses: dict[str, float]) -> None:
        if step == stop_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(method, checkpoint=checkpoint, on_step=interrupt)
    assert torch.load(checkpoint, weights_only=True)["step"] == stop_at
    steps_seen: list[int] = []
    resumed = fit(method, checkpoint=checkpoint,
                  on_step=lambda step, losses: steps_seen.append(step))
    assert steps_seen == list(range(stop_at + 1, CYCLE.steps + 1))
    straight = fit(method)
    for (name, a), (_, b) in zip(resumed.generator.state_dict().items(),  # type: ignore[attr-defined]
                                 straight.generator.state_dict().items(),  # type: ignore[attr-defined]
                                 strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # A checkpoint made with other hyperparameters is refused, not mixed in.
    with pytest.raises(ValueError, match="delete it to start afresh"):
        fit(method, checkpoint=checkpoint, lr=1e-3)


def test_stylemapper_takes_the_target_style_at_run_time() -> None:
    harmonizer = fit("stylemapper")
    assert isinstance(harmonizer, StyleMapperHarmonizer)
    assert harmonizer.target_domain == ScannerDomain("SIEMENS", 3.0)
    restyled = harmonizer.restyled([other_scan(40)])
    assert restyled.target_domain == OTHER and restyled.source_domain == harmonizer.source_domain
    assert not torch.equal(restyled.target_style, harmonizer.target_style)
    acq = source_scan(41, 1.0)
    # Target scale differs (gain 3 vs 1), so the outputs land in different units.
    assert restyled.harmonize(acq).mean() > 1.5 * harmonizer.harmonize(acq).mean()
    with pytest.raises(ValueError, match="mix scanner domains"):
        harmonizer.restyled([other_scan(42), target_scan(43)])
    # The sharpening follows the style reference: refitted from the kept output spectrum to
    # the new target's spectrum, or from a re-measured one when source series are given.
    assert harmonizer.source_spectrum is not None
    np.testing.assert_array_equal(restyled.source_spectrum, harmonizer.source_spectrum)
    references = [other_scan(40)]
    target_spectrum = radial_log_spectrum([acq.pre_contrast for acq in references])
    assert restyled.sharpening == fit_unsharp(harmonizer.source_spectrum, target_spectrum)
    remeasured = harmonizer.restyled(references, source=[source_scan(44, 1.0)])
    assert remeasured.source_spectrum is not None
    assert not np.array_equal(remeasured.source_spectrum, harmonizer.source_spectrum)


def test_stylemapper_matches_the_scanners_histograms_not_the_series(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A series' histogram is its patient's too (fibroglandular density): the transfer's
    # match runs from the source scanner's pooled tissue quantiles, whatever the series.
    harmonizer = fit("stylemapper")
    assert isinstance(harmonizer, StyleMapperHarmonizer)
    source = [source_scan(10, 0.7), source_scan(11, 2.0)]
    np.testing.assert_array_equal(
        harmonizer.source_quantiles, native_tissue_quantiles([a.pre_contrast for a in source]))
    matched: list[np.ndarray] = []
    real_match = stylemapper.match_logits

    def recording(source_q: np.ndarray, target_q: np.ndarray, knots: int) -> np.ndarray:
        matched.append(source_q)
        return real_match(source_q, target_q, knots)

    monkeypatch.setattr(stylemapper, "match_logits", recording)
    for fgt_radius in (0.35, 0.7):  # a fatty and a dense breast
        harmonizer.harmonize(scan(intrinsic(45, fgt_radius)[0], gain=1.0, gamma=1.6,
                                  domain=harmonizer.source_domain, seed=46))
    assert len(matched) == 2
    for used in matched:
        np.testing.assert_array_equal(used, harmonizer.source_quantiles)
    # Other series of the source scanner, given when restyling, give its quantiles anew.
    others = [source_scan(47, 1.0)]
    restyled = harmonizer.restyled([target_scan(48)], source=others)
    np.testing.assert_array_equal(
        restyled.source_quantiles, native_tissue_quantiles([a.pre_contrast for a in others]))


def test_dicomnode_train_cyclegan_end_to_end(tmp_path: Path) -> None:
    # Phantoms at 3.5 mm pixels so that the default working grid fits them.
    for side, acq, vendor in (("source", source_scan(50, 1.0), "GE"),
                              ("target", target_scan(51), "SIEMENS")):
        coarse = dataclasses.replace(acq, spacing_mm=(8.0, 3.5, 3.5))
        write_dicom(coarse, tmp_path / side / "dce", vendor)
    out = tmp_path / "models" / "cyclegan-ge-1.5t_to_siemens-3t"
    argv = ["cyclegan", "--source", str(tmp_path / "source"), "--target",
            str(tmp_path / "target"), "--out", str(out), "--steps", "2", "--threads", "1"]
    assert train_main(argv) == 0
    loaded = load_model("cyclegan", out.name, root=out.parent)
    assert loaded.card["training_command"] == "dicomnode-train " + " ".join(argv)
    assert not (out / "checkpoint.pt").exists()
    assert train_main(["histogram", "--source", str(tmp_path / "source"), "--target",
                       str(tmp_path / "target"), "--out", str(tmp_path / "h"),
                       "--steps", "3"]) == 1


def test_monotone_transfer_is_increasing_from_zero_for_any_logits() -> None:
    torch.manual_seed(0)
    x = torch.linspace(0, 2 * X_MAX, 2001)
    for logits in (torch.randn(16) * 3, initial_slope_logits(16), torch.randn(3, 16)):
        f = monotone_transfer(x.expand(*logits.shape[:-1], -1), logits)
        assert torch.all(f[..., 1:] > f[..., :-1])
        assert torch.all(f[..., 0] == 0)
    torch.testing.assert_close(monotone_transfer(x, initial_slope_logits(16)), x)


def test_dicomnode_train_restyles_a_stylemapper(tmp_path: Path) -> None:
    base = fit("stylemapper")
    assert isinstance(base, StyleMapperHarmonizer)
    save_model(base, tmp_path / "base", training_data="phantoms", training_command="pytest")
    write_dicom(source_scan(60, 1.0), tmp_path / "ge" / "dce", "GE")
    write_dicom(target_scan(61, gain=2.0), tmp_path / "siemens" / "dce", "SIEMENS")
    out = tmp_path / "stylemapper-ge-1.5t_to_siemens-3t"
    argv = ["stylemapper", "--restyle-from", str(tmp_path / "base"), "--source",
            str(tmp_path / "ge"), "--target", str(tmp_path / "siemens"), "--out", str(out)]
    assert train_main(argv) == 0
    loaded = load_model("stylemapper", out.name, root=tmp_path).harmonizer
    assert isinstance(loaded, StyleMapperHarmonizer)
    # Same network, new style reference: twice the target gain, about twice the scale.
    torch.testing.assert_close(loaded.generator.state_dict(), base.generator.state_dict())
    assert 1.6 < loaded.target_scale / base.target_scale < 2.4


def test_shading_field_comes_from_tissue_alone_at_inference() -> None:
    # Tissue fills the left half of the slice; the network's raw field is large only over
    # the air on the right, where training never constrained it.
    stack = torch.zeros(1, 3, 64, 64)
    stack[..., :32] = 1.0
    raw = torch.zeros(1, 1, 16, 16)
    raw[..., 8:] = 2.0
    plain = bounded_log_gain(raw, (64, 64))
    weighted = bounded_log_gain(raw, (64, 64), stack)
    assert plain[..., 24:32].abs().max() > 0.2  # the plain blur carries air into the tissue
    assert weighted[..., :32].abs().max() < 1e-3
