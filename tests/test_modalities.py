"""Modality adapters (Eqs. 3-5): mel filterbank, log-mel audio, frame grid, point-cloud views, classifiers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from urlk_forecast.models.modalities import (
    KALDI_EPS,
    AudioAdapter,
    ImageAdapter,
    PointCloudAdapter,
    VideoAdapter,
    create_classifier,
    frames_to_grid,
    grid_shape,
    grid_to_frames,
    hz_to_mel,
    kaldi_mel_filterbank,
    kaldi_window,
    mel_filterbank,
    mel_frequencies,
    mel_to_hz,
    project_points,
)

TINY = dict(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1))


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------- mel scale
def test_mel_scale_closed_form_points():
    assert hz_to_mel(700.0, "htk") == pytest.approx(2595 * math.log10(2), abs=1e-12)
    assert hz_to_mel(0.0, "htk") == 0.0
    # Slaney: linear 3 mels per 200 Hz below 1 kHz, 27 mels per factor 6.4 above
    assert hz_to_mel(500.0, "slaney") == pytest.approx(7.5, abs=1e-12)
    assert hz_to_mel(1000.0, "slaney") == pytest.approx(15.0, abs=1e-12)
    assert hz_to_mel(6400.0, "slaney") == pytest.approx(42.0, abs=1e-12)
    f = np.array([0.0, 37.0, 999.0, 1000.0, 1001.0, 4321.0, 8000.0])
    for scale in ("htk", "slaney"):
        np.testing.assert_allclose(mel_to_hz(hz_to_mel(f, scale), scale), f, rtol=1e-12, atol=1e-9)
        assert np.all(np.diff(hz_to_mel(f, scale)) > 0)
    with pytest.raises(ValueError, match="htk"):
        hz_to_mel(1.0, "bark")


def _reference_filterbank(n_freqs, n_mels, sr, fmin, fmax, scale, norm):
    """Explicit float64 loops over filters and FFT bins (independent of the vectorised implementation)."""
    lo, hi = float(hz_to_mel(fmin, scale)), float(hz_to_mel(fmax, scale))
    edges = [float(mel_to_hz(lo + (hi - lo) * i / (n_mels + 1), scale)) for i in range(n_mels + 2)]
    out = np.zeros((n_freqs, n_mels))
    for m in range(n_mels):
        a, c, b = edges[m], edges[m + 1], edges[m + 2]
        for k in range(n_freqs):
            f = k * (sr / 2) / (n_freqs - 1)
            if a < f <= c:
                w = (f - a) / (c - a)
            elif c < f < b:
                w = (b - f) / (b - c)
            else:
                w = 0.0
            out[k, m] = w * (2.0 / (b - a) if norm == "slaney" else 1.0)
    return out


@pytest.mark.parametrize("scale,norm", [("htk", None), ("slaney", "slaney"), ("htk", "slaney")])
def test_mel_filterbank_matches_explicit_loop(scale, norm):
    fb = mel_filterbank(129, 24, 8000, 50.0, 3900.0, scale, norm)
    assert fb.dtype == torch.float64 and fb.shape == (129, 24)
    ref = _reference_filterbank(129, 24, 8000, 50.0, 3900.0, scale, norm)
    np.testing.assert_allclose(fb.numpy(), ref, rtol=1e-12, atol=1e-15)


def test_mel_filterbank_librosa_numbers():
    """Values of librosa.filters.mel(sr=16000, n_fft=400, n_mels=40) (float64), pinned as published numbers."""
    fb = mel_filterbank(201, 40, 16000, 0.0, 8000.0, "slaney", "slaney").numpy()
    nz = np.flatnonzero(fb[:, 10])
    assert nz.tolist() == [19, 20, 21, 22]
    np.testing.assert_allclose(fb[nz, 10], [0.00448928040089983, 0.01187948977068883, 0.00791524038454043,
                                            0.00052503101475142], rtol=1e-12)
    fb = mel_filterbank(201, 40, 16000, 0.0, 8000.0, "htk", None).numpy()
    nz = np.flatnonzero(fb[:, 30])
    assert nz.tolist() == list(range(94, 108))
    np.testing.assert_allclose(fb[[94, 100, 101, 107], 30],
                               [0.12547770362979446, 0.9811074995200944, 0.8836623567022418, 0.07903888092354448],
                               rtol=1e-12)


def test_mel_filters_partition_unity_and_monotone_centres():
    sr, n_freqs, n_mels = 16000, 257, 40
    fb = mel_filterbank(n_freqs, n_mels, sr, 0.0, 8000.0, "htk").numpy()
    centres = mel_frequencies(n_mels, 0.0, 8000.0, "htk")[1:-1]
    assert np.all(np.diff(centres) > 0)
    freqs = np.linspace(0, sr / 2, n_freqs)
    inside = (freqs >= centres[0]) & (freqs <= centres[-1])
    np.testing.assert_allclose(fb[inside].sum(axis=1), 1.0, atol=1e-12)
    # each filter peaks at the FFT bin nearest its centre and is zero outside its two neighbours' centres
    assert np.all(np.diff(fb.argmax(axis=0)) >= 0)
    assert np.all(fb <= 1.0 + 1e-12) and np.all(fb >= 0)


def test_mel_filterbank_errors():
    with pytest.raises(ValueError, match="fall between FFT bins"):
        mel_filterbank(33, 128, 16000)
    with pytest.raises(ValueError, match="f_max"):
        mel_filterbank(201, 40, 16000, 0.0, 9000.0)


# ------------------------------------------------------------------------------------------------ audio
def test_log_mel_matches_float64_numpy_reference():
    sr, n_fft, hop, n_mels = 8000, 256, 80, 32
    g = torch.Generator().manual_seed(0)
    wave = torch.randn(2, 4000, generator=g, dtype=torch.float64)
    ad = AudioAdapter(sr, n_fft, hop, n_mels=n_mels, window="hamming", frontend="stft")
    out = ad(wave)
    T = 1 + 4000 // hop
    assert out.shape == (2, 1, T, n_mels) and ad.num_frames(4000) == T
    # reference: reflect-pad n_fft/2, frame, periodic Hamming window, rFFT power, mel, natural log
    w = wave.numpy()
    win = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    fb = mel_filterbank(n_fft // 2 + 1, n_mels, sr).numpy()
    for b in range(2):
        x = np.pad(w[b], n_fft // 2, mode="reflect")
        frames = np.stack([x[t * hop: t * hop + n_fft] * win for t in range(T)])
        power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
        ref = np.log(power @ fb + 1e-6)
        np.testing.assert_allclose(out[b, 0].numpy(), ref, rtol=2e-4, atol=2e-4)  # float32 STFT


def test_pure_tone_lands_in_the_nearest_mel_band():
    sr, n_mels = 16000, 64
    ad = AudioAdapter(sr, n_fft=512, hop_length=160, n_mels=n_mels, frontend="stft")
    centres = mel_frequencies(n_mels, 0.0, sr / 2, "htk")[1:-1]
    for f0 in (300.0, 1234.0, 5000.0):
        t = torch.arange(sr // 2, dtype=torch.float32) / sr
        spec = ad(torch.sin(2 * math.pi * f0 * t)[None])[0, 0]  # (T, F)
        band = int(spec[5:-5].mean(0).argmax())
        assert abs(band - int(np.argmin(np.abs(centres - f0)))) <= 1


def _kaldi_reference_bank(n_fft, n_mels, sr, f_lo, f_hi):
    """Kaldi's MelBanks (mel-computations.cc), float64 loops: triangles linear in mel = 1127 ln(1 + f/700) over the
    bins k < n_fft/2; returns (n_mels, n_fft // 2)."""
    def mel(f):
        return 1127.0 * math.log(1.0 + f / 700.0)

    lo, hi = mel(f_lo), mel(f_hi)
    delta = (hi - lo) / (n_mels + 1)
    bank = np.zeros((n_mels, n_fft // 2))
    for m in range(n_mels):
        left, centre, right = lo + m * delta, lo + (m + 1) * delta, lo + (m + 2) * delta
        for k in range(n_fft // 2):
            z = mel(k * sr / n_fft)
            if left < z < right:
                bank[m, k] = (z - left) / (centre - left) if z <= centre else (right - z) / (right - centre)
    return bank


def _kaldi_fbank_reference(wave, sr, window, n_mels=128, f_lo=20.0, preemph=0.97):
    """Kaldi's fbank features (compute-fbank-feats, i.e. torchaudio.compliance.kaldi.fbank with dither 0 and no
    energy) in float64, frame by frame: 25 ms frames every 10 ms (whole frames only), remove the DC offset,
    pre-emphasis x[i] -= p x[i-1] (x[0] -= p x[0]), symmetric window, zero-pad to the next power of two, power
    spectrum, mel banks (Nyquist bin excluded), log with the float32-epsilon floor."""
    win, hop = int(sr * 0.025), int(sr * 0.010)
    n_fft = 1
    while n_fft < win:
        n_fft *= 2
    i = np.arange(win)
    a = 2 * math.pi / (win - 1)
    w = {"hanning": 0.5 - 0.5 * np.cos(a * i), "povey": (0.5 - 0.5 * np.cos(a * i)) ** 0.85,
         "hamming": 0.54 - 0.46 * np.cos(a * i)}[window]
    bank = _kaldi_reference_bank(n_fft, n_mels, sr, f_lo, sr / 2)
    T = 1 + (len(wave) - win) // hop
    out = np.empty((T, n_mels))
    for t in range(T):
        frame = np.asarray(wave[t * hop: t * hop + win], dtype=np.float64).copy()
        frame -= frame.mean()
        for k in range(win - 1, 0, -1):
            frame[k] -= preemph * frame[k - 1]
        frame[0] -= preemph * frame[0]
        padded = np.zeros(n_fft)
        padded[:win] = frame * w
        power = np.abs(np.fft.rfft(padded))[: n_fft // 2] ** 2
        out[t] = np.log(np.maximum(bank @ power, np.finfo(np.float32).eps))
    return out


def _test_waveform(sr=16000):
    """1 s: two tones, a chirp and noise at speech-like levels, the last 0.2 s exact silence."""
    g = np.random.default_rng(3)
    t = np.arange(sr) / sr
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3150 * t + 1.0)
    x += 0.05 * np.sin(2 * np.pi * (200 + 3000 * t) * t) + 0.02 * g.standard_normal(sr) + 0.01  # + a DC offset
    x[int(0.8 * sr):] = 0.0
    return x.astype(np.float32)


def test_kaldi_mel_filterbank_matches_kaldi_loops():
    fb = kaldi_mel_filterbank(512, 128, 16000, 20.0)
    assert fb.dtype == torch.float64 and fb.shape == (257, 128)
    ref = _kaldi_reference_bank(512, 128, 16000, 20.0, 8000.0)
    np.testing.assert_allclose(fb.numpy()[:256].T, ref, rtol=1e-12, atol=1e-13)
    assert np.all(fb.numpy()[256] == 0)  # no weight on the Nyquist bin, as in Kaldi
    # Kaldi's own bank has one empty filter here (97-141 mel lies between bins 2 and 3); it is kept, not an error
    assert np.flatnonzero(fb.numpy().max(axis=0) <= 0).tolist() == [3]
    np.testing.assert_allclose(hz_to_mel(np.array([700.0, 20.0]), "kaldi"), [1127 * math.log(2), 31.748578],
                               rtol=1e-7)
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(np.array([20.0, 8000.0]), "kaldi"), "kaldi"), [20.0, 8000.0])
    with pytest.raises(ValueError, match="even"):
        kaldi_mel_filterbank(551, 64, 22050)


def test_kaldi_windows_by_formula():
    n = np.arange(400)
    c = np.cos(2 * np.pi * n / 399)
    np.testing.assert_allclose(kaldi_window("hanning", 400).numpy(), 0.5 - 0.5 * c, atol=1e-15)
    np.testing.assert_allclose(kaldi_window("povey", 400).numpy(), (0.5 - 0.5 * c) ** 0.85, atol=1e-15)
    np.testing.assert_allclose(kaldi_window("hamming", 400).numpy(), 0.54 - 0.46 * c, atol=1e-15)
    assert kaldi_window("hanning", 400)[0] == 0 and kaldi_window("hanning", 400)[-1] == 0  # symmetric


@pytest.mark.parametrize("window", [None, "povey", "hamming"])
def test_default_audio_adapter_is_the_kaldi_fbank_of_the_paper(window):
    """AudioAdapter() = the paper's (AST's) features on 1 s of 16 kHz audio: 98 x 128 Kaldi fbank (window
    "hanning" by default), against a float64 Kaldi reference; Kaldi's povey and hamming windows too."""
    wave = _test_waveform()
    ad = AudioAdapter() if window is None else AudioAdapter(window=window)
    assert (ad.sample_rate, ad.win_length, ad.hop_length, ad.n_fft, ad.n_mels) == (16000, 400, 160, 512, 128)
    out = ad(torch.from_numpy(wave)[None])
    assert out.shape == (1, 1, 98, 128) and out.dtype == torch.float32
    ref = _kaldi_fbank_reference(wave, 16000, window or "hanning")
    np.testing.assert_allclose(out[0, 0].numpy(), ref, rtol=1e-4, atol=1e-4)
    assert np.all(ref[-10:] == math.log(KALDI_EPS))  # frames in the silent tail sit on the floor
    assert np.all(ref[:, 3] == math.log(KALDI_EPS))  # the empty filter
    # a pure tone: the loudest band is the one whose centre is nearest its frequency
    lo, hi = hz_to_mel(20.0, "kaldi"), hz_to_mel(8000.0, "kaldi")
    centres = mel_to_hz(lo + (hi - lo) / 129 * np.arange(1, 129), "kaldi")
    for f0 in (440.0, 1234.0, 5000.0):
        tone = torch.sin(2 * math.pi * f0 * torch.arange(16000, dtype=torch.float64) / 16000).float()
        band = int(ad(tone[None])[0, 0].mean(0).argmax())
        assert abs(band - int(np.argmin(np.abs(centres - f0)))) <= 1
    # batch of two, (B, 1, N) input and float64 input give the same features
    two = ad(torch.from_numpy(np.stack([wave, wave[::-1].copy()]))[:, None].double())
    assert two.dtype == torch.float64
    torch.testing.assert_close(two[:1].float(), out)
    np.testing.assert_allclose(two[1, 0].numpy(), _kaldi_fbank_reference(wave[::-1], 16000, window or "hanning"),
                               rtol=1e-4, atol=1e-4)


def test_audio_fixed_frames_normalisation_and_errors():
    stft = dict(n_mels=32, frontend="stft")
    ad = AudioAdapter(8000, 256, 128, n_frames=40, mean=-3.0, std=2.0, **stft)
    x = torch.randn(3, 1, 8000)
    out = ad(x)
    assert out.shape == (3, 1, 40, 32)
    raw = AudioAdapter(8000, 256, 128, **stft)(x)
    torch.testing.assert_close(out[:, 0], ((raw[:, 0, :40]) + 3.0) / 2.0)
    short = AudioAdapter(8000, 256, 128, n_frames=80, **stft)(x)  # padded with the log floor, not zeros
    assert torch.all(short[:, 0, 63:] == math.log(1e-6))
    with pytest.raises(ValueError, match=r"\(batch, samples\).*got shape \(3, 2, 8000\)"):
        ad(torch.randn(3, 2, 8000))
    with pytest.raises(ValueError, match=r"15x32 .*>= 32"):
        AudioAdapter(8000, 256, 128, **stft)(torch.randn(1, 1800))
    # the Kaldi frontend keeps whole frames only: 1 + (N - 400) // 160
    kaldi = AudioAdapter()
    assert kaldi.num_frames(16000) == 98 and kaldi.num_frames(399) == 0
    with pytest.raises(ValueError, match=r"399 samples; one frame needs win_length = 400"):
        kaldi(torch.randn(1, 399))
    with pytest.raises(ValueError, match=r"log-mel image would be 3x128"):
        kaldi(torch.randn(1, 800))
    with pytest.raises(ValueError, match="frontend='stft'"):
        AudioAdapter(mel_scale="slaney")
    with pytest.raises(ValueError, match="frontend='kaldi'"):
        AudioAdapter(frontend="stft", preemphasis=0.97)
    with pytest.raises(ValueError, match="hanning, povey"):
        AudioAdapter(window="hann")
    with pytest.raises(ValueError, match="frontend must be"):
        AudioAdapter(frontend="mfcc")


# ------------------------------------------------------------------------------------------------ video
def test_frames_to_grid_pixel_by_pixel():
    B, N, C, h, w = 2, 6, 3, 5, 7
    video = torch.randn(B, N, C, h, w)
    rows, cols = grid_shape(N)
    assert (rows, cols) == (2, 3)
    img = frames_to_grid(video)
    assert img.shape == (B, C, rows * h, cols * w)
    assert img.shape[-2] * img.shape[-1] // (h * w) == N  # Eq. 5: HW / hw = N_F
    for b in range(B):
        for n in range(N):
            r, c = divmod(n, cols)
            for ch in range(C):
                for y in range(h):
                    for x in range(w):
                        assert img[b, ch, r * h + y, c * w + x] == video[b, n, ch, y, x]
    torch.testing.assert_close(grid_to_frames(img, (rows, cols)), video, rtol=0, atol=0)
    assert grid_shape(16) == (4, 4) and grid_shape(8) == (2, 4) and grid_shape(7) == (1, 7)


def test_video_adapter_checks():
    ad = VideoAdapter(n_frames=16)
    assert ad(torch.randn(1, 16, 3, 8, 8)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"16 frames, 3 channels.*got shape \(1, 8, 3, 8, 8\)"):
        ad(torch.randn(1, 8, 3, 8, 8))
    with pytest.raises(ValueError, match="16x16"):
        ad(torch.randn(1, 16, 3, 4, 4))
    with pytest.raises(ValueError, match="grid"):
        VideoAdapter(n_frames=6, grid=(4, 4))


# ------------------------------------------------------------------------------------------ point cloud
def test_project_points_by_hand():
    pts = torch.tensor([[[0.0, 0.0, 0.5], [0.1, 0.1, -0.5], [-0.9, 0.9, 0.0], [2.0, 0.0, 0.0]]])
    maps = project_points(pts, resolution=4, normalize=False)
    assert maps.shape == (1, 3, 2, 4, 4)
    xy_occ, xy_depth = maps[0, 0, 0], maps[0, 0, 1]
    # xy view: u = floor((x+1)/2·4), row = floor((1-y)/2·4); points 0 and 1 land in different pixels
    # point 0: u=2, row=2; point 1: u=floor(2.2)=2, row=floor(1.8)=1; point 2: u=0, row=0; point 3 outside
    assert xy_occ[2, 2] == pytest.approx(math.log(2))
    assert xy_occ[1, 2] == pytest.approx(math.log(2))
    assert xy_occ[0, 0] == pytest.approx(math.log(2))
    assert float(xy_occ.sum()) == pytest.approx(3 * math.log(2))  # the point at x=2 is dropped
    assert xy_depth[2, 2] == pytest.approx(0.75) and xy_depth[1, 2] == pytest.approx(0.25)
    # yz view (u=y, row from z): points 0 and 2 -> depth = (1+x)/2
    yz_occ, yz_depth = maps[0, 1, 0], maps[0, 1, 1]
    assert yz_occ[1, 2] == pytest.approx(math.log(2)) and yz_depth[1, 2] == pytest.approx(0.5)  # point 0
    assert yz_depth[2, 3] == pytest.approx(0.05)  # point 2: y=0.9 -> u=3, z=0 -> row 2, x=-0.9
    # two points in one pixel: count 2, depth = max
    two = project_points(torch.tensor([[[0.05, -0.05, 0.2], [0.1, -0.1, 0.6]]]), 4, normalize=False)
    assert two[0, 0, 0, 2, 2] == pytest.approx(math.log(3)) and two[0, 0, 1, 2, 2] == pytest.approx(0.8)


def test_project_points_normalisation_invariance_and_errors():
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(2, 200, 3, generator=g)
    a = project_points(pts, 32)
    b = project_points(pts * 7.5 + torch.tensor([3.0, -2.0, 10.0]), 32)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"\(batch, points, 3\).*\(2, 200\)"):
        project_points(pts[..., 0], 32)
    bad = pts.clone()
    bad[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        project_points(bad, 32)


def test_point_cloud_adapter_learnable_and_differentiable():
    ad = PointCloudAdapter(resolution=32, hidden=4)
    out = ad(torch.randn(2, 300, 3))
    assert out.shape == (2, 3, 32, 32)
    out.square().mean().backward()
    grads = [p.grad for p in ad.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads)


# ------------------------------------------------------------------------------------------ classifier
@pytest.mark.parametrize(
    "modality,x,kw",
    [
        ("image", torch.randn(2, 1, 8, 8), dict(channels=1, size=32)),
        ("audio", torch.randn(2, 4000), dict(sample_rate=8000, n_fft=256, hop_length=100, n_mels=32)),
        ("video", torch.randn(2, 4, 3, 16, 16), dict(n_frames=4)),
        ("pointcloud", torch.randn(2, 64, 3), dict(resolution=32, hidden=4)),
    ],
)
def test_create_classifier_all_modalities(modality, x, kw):
    net = create_classifier(modality, "unireplknet_a", 7, **kw, **TINY)
    assert net.backbone.in_chans == net.adapter.out_channels
    assert net.backbone.dims == TINY["dims"]
    logits = net(x)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    logits.sum().backward()
    net.eval()
    with torch.no_grad():
        before = net(x)
        net.reparameterize()
        after = net(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_create_classifier_errors():
    with pytest.raises(ValueError, match="unknown modality 'smell'"):
        create_classifier("smell", "a", 3)
    with pytest.raises(ValueError, match="in_chans"):
        create_classifier("image", "a", 3, in_chans=4)
    net = create_classifier("image", "a", 3, channels=3, **TINY)
    with pytest.raises(ValueError, match=r"\(batch, 3 channels, H, W\), got shape \(2, 1, 32, 32\)"):
        net(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="16x16 is smaller"):
        net(torch.randn(2, 3, 16, 16))
    assert ImageAdapter(3)(torch.ones(1, 3, 32, 32)).shape == (1, 3, 32, 32)
