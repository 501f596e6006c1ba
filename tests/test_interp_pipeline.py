"""The interpolation method on the tiny fixture models: each scheme equal to its definition, shared
noise, textual inversion as the authors do it, ranking, conditioning, and the `interpolate` command."""
import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

import pose
from interp.apps.interpolate import main as interpolate_main
from interp.conditioning import PoseConditioning, TextConditioning, control_strength, place_keypoints, read_keypoints
from interp.frames import Frame, NoiseLevel
from interp.interpolator import Interpolator
from interp.inversion import cache_key, denoising_loss, invert
from interp.schemes import SCHEMES, input_chains, scheme
from interp.settings import Settings
from interp.slerp import slerp
from ldm.accel import memory
from ldm.images import placement
from ldm.sample.ddim import DDIM

SIZE = 64  # pixels: an 8x8 latent keeps every test fast


def endpoints(n=4):
    g = torch.Generator().manual_seed(0)
    return {0: torch.randn(1, 4, 8, 8, generator=g), n: torch.randn(1, 4, 8, 8, generator=g)}


@pytest.fixture(scope="module")
def latents(tiny_sd):
    return endpoints()


@pytest.fixture(scope="module")
def text(tiny_sd):
    g = torch.Generator().manual_seed(1)
    c = torch.randn(3, 77, 64, generator=g)
    return TextConditioning(c[:1], c[1:2], c[2:])


RUNNER = ("controlnet", "poses", "fixed_batch", "chooser")  # the Interpolator's own arguments; the rest are settings


def interpolator(sd, text, name="ours", frames=5, candidates=1, scorer=None, steps=10, **kw):
    settings = Settings(scheme=name, frames=frames, steps=steps, candidates=candidates,
                        **{k: v for k, v in kw.items() if k not in RUNNER})
    return Interpolator(sd, settings, text, scorer=scorer, **{k: v for k, v in kw.items() if k in RUNNER})


class Recorder:
    """Wraps an Interpolator's denoise to keep every batch it was given."""

    def __init__(self, it):
        self.batches, self.denoise = [], it.denoise
        it.denoise = self

    def __call__(self, x, indices, start, end=None):
        self.batches.append((x.clone(), list(indices), start, end))
        return self.denoise(x, indices, start, end)


def run(it, latents):
    made = {}
    result = it.run(dict(latents), lambda i, image, z, info: made.update({i: info}))
    return result, made


def test_a_fixed_batch_gives_every_unet_call_one_shape_and_the_same_frames(tiny_sd, text, latents):
    """--compile: the rounds grow, but every UNet call has max_batch rows, so a compiled UNet compiles once."""
    rows = []
    hook = tiny_sd.unet.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    try:
        fixed, _ = run(interpolator(tiny_sd, text, frames=9, max_batch=4, fixed_batch=True), {0: latents[0], 8: latents[4]})
    finally:
        hook.remove()
    free, _ = run(interpolator(tiny_sd, text, frames=9), {0: latents[0], 8: latents[4]})
    assert set(rows) == {4} and len(rows) > 10
    for i in free:
        torch.testing.assert_close(fixed[i], free[i], atol=1e-4, rtol=1e-4)


def test_default_plan_for_17_frames():
    plan = scheme("ours").plan(17)
    assert [l.timestep for l in plan.levels] == [551, 466, 381, 301]
    assert plan.candidates == (8, 7, 6, 5) and plan.steps == 200 and len(plan.timesteps) == 200
    assert [[f.index for f in r] for r in plan.rounds][:2] == [[8], [4, 12]]


def test_shared_noise_at_the_ends_equals_the_noisy_parent(tiny_sd, text, latents):
    it = interpolator(tiny_sd, text)
    level = NoiseLevel(6, 601)
    for position, parent in ((0.0, 0), (1.0, 4)):
        x = SCHEMES["ours"].start(it, Frame(2, 0, 4, position), level, 3, latents)
        eps = it.noise(("frame", 2), 3, latents[0])
        expected = tiny_sd.schedule.q_sample(latents[parent].expand(3, -1, -1, -1), 601, eps)
        assert torch.equal(x, expected)
    # Without shared noise the two parents get different noise, so the middle differs.
    unshared = SCHEMES["ours-no-shared-noise"].start(it, Frame(2, 0, 4, 0.5), level, 1, latents)
    shared = SCHEMES["ours"].start(it, Frame(2, 0, 4, 0.5), level, 1, latents)
    assert not torch.allclose(unshared, shared)


def test_noise_is_per_key_and_reproducible(tiny_sd, text, latents):
    it = interpolator(tiny_sd, text)
    assert torch.equal(it.noise(("frame", 3), 2, latents[0]), it.noise(("frame", 3), 2, latents[0]))
    assert not torch.equal(it.noise(("frame", 3), 2, latents[0]), it.noise(("frame", 1), 2, latents[0]))


def noise_part(chain, z0, t, schedule):
    """z_t - sqrt(abar_t) z_0: the noise a chain latent carries."""
    return chain - schedule.at("sqrt_alphas_cumprod", t, z0) * z0


def test_input_chains_share_their_noise_and_have_the_right_marginal(tiny_sd, text):
    lat = endpoints(8)
    it = interpolator(tiny_sd, text, "did", frames=9, steps=20)
    levels = it.plan.levels
    a, b = input_chains(it, lat, levels, shared=True)
    for t in a:
        torch.testing.assert_close(noise_part(a[t], lat[0], t, tiny_sd.schedule),
                                   noise_part(b[t], lat[8], t, tiny_sd.schedule), atol=1e-5, rtol=0)
    # The first link is plain q_sample; the noise part has variance 1 - abar_t at every link.
    lowest = min(a)
    torch.testing.assert_close(a[lowest], tiny_sd.schedule.q_sample(lat[0], lowest, it.noise(("chain", lowest, 0), 1, lat[0])))
    a2, b2 = input_chains(it, lat, levels, shared=False)
    assert not torch.allclose(noise_part(a2[lowest], lat[0], lowest, tiny_sd.schedule),
                              noise_part(b2[lowest], lat[8], lowest, tiny_sd.schedule))


def test_interpolate_denoise_is_one_slerp_of_the_input_chains_per_level(tiny_sd, text):
    lat = endpoints(8)
    it = interpolator(tiny_sd, text, "interpolate-denoise", frames=9, steps=20)
    plan = it.plan
    assert [[f.index for f in r] for r in plan.rounds] == [[4], [3, 5], [2, 6], [1, 7]]
    assert all(f.left == 0 and f.right == 8 for r in plan.rounds for f in r)
    level_of = {f.index: lvl for r, lvl in zip(plan.rounds, plan.levels) for f in r}
    for i in range(1, 8):  # the level depends on min(i, N - i) only, and falls towards both inputs
        assert level_of[i] == level_of[8 - i]
    assert level_of[4].timestep > level_of[3].timestep > level_of[2].timestep > level_of[1].timestep
    rec = Recorder(it)
    _, made = run(it, lat)
    a, b = input_chains(it, lat, plan.levels, shared=True)
    for x, indices, start, end in rec.batches:
        t = level_of[indices[0]].timestep
        assert start == level_of[indices[0]].step and end is None
        expected = slerp(a[t], b[t], torch.tensor([i / 8 for i in indices]))
        torch.testing.assert_close(x, expected, atol=1e-6, rtol=0)
    assert sorted(made) == list(range(1, 8)) and made[3]["ddim_steps"] == level_of[3].step + 1


@pytest.mark.parametrize("name", ["did", "did-no-shared-noise"])
def test_did_denoises_every_frame_level_by_level_from_the_input_chains(tiny_sd, text, name):
    lat = endpoints(8)
    it = interpolator(tiny_sd, text, name, frames=9, steps=20)
    plan = it.plan
    rec = Recorder(it)
    result, made = run(it, lat)
    assert it.unet_calls == it.steps_to_run({}) == plan.levels[0].step + 1
    a, b = input_chains(it, lat, plan.levels, shared=name == "did")
    # Round r denoises every frame made so far, from level r to level r + 1 (the last to the clean latent).
    assert [indices for _, indices, _, _ in rec.batches] == [[4], [2, 4, 6], [1, 2, 3, 4, 5, 6, 7]]
    assert [(s, e) for _, _, s, e in rec.batches] == [(plan.levels[0].step, plan.levels[1].step),
                                                      (plan.levels[1].step, plan.levels[2].step), (plan.levels[2].step, None)]
    t0, t1 = plan.levels[0].timestep, plan.levels[1].timestep
    torch.testing.assert_close(rec.batches[0][0], slerp(a[t0], b[t0], 0.5), atol=1e-6, rtol=0)
    # Round 1: the new frames slerp the inputs' chain latents at t1 with frame 4 denoised to t1; then frame 4
    # itself is re-interpolated from them (the authors' retroactive_interp).
    z4 = rec.denoise(rec.batches[0][0], [4], plan.levels[0].step, plan.levels[1].step)
    x1 = rec.batches[1][0]
    new2, new6 = slerp(a[t1], z4, 0.5), slerp(z4, b[t1], 0.5)
    torch.testing.assert_close(x1[0:1], new2, atol=1e-5, rtol=0)
    torch.testing.assert_close(x1[2:3], new6, atol=1e-5, rtol=0)
    torch.testing.assert_close(x1[1:2], slerp(new2, new6, 0.5), atol=1e-5, rtol=0)
    assert sorted(made) == list(range(1, 8)) and all(made[i]["ddim_steps"] > 0 for i in made)
    assert made[4]["ddim_steps"] == plan.levels[0].step + 1


def test_text_and_control_conditioning(text):
    cond, uncond = text.at([0.0, 1.0])
    assert torch.equal(cond[0], text.cond[0][0]) and torch.equal(cond[1], text.cond[1][0])
    assert torch.equal(uncond[0], text.uncond[0][0])
    s = control_strength([0.0, 0.25, 0.5, 1.0])
    assert torch.allclose(s, torch.tensor([1.0, 1.25, 1.5, 1.0]))


def person(points):
    kp = np.zeros((18, 3))
    for k, (x, y) in points.items():
        kp[k] = [x, y, 0.9]
    return kp


def test_pose_hints_follow_the_interpolated_skeleton():
    a = person({1: (32, 20), 2: (20, 20), 5: (44, 20)})
    b = a.copy()
    b[:, 1] += 20 * (b[:, 2] > 0)
    cond = PoseConditioning([a], [b], 64, 64)
    hints = cond.hints([0.0, 0.5])
    assert hints.shape == (2, 3, 64, 64) and 0 <= hints.min() and hints.max() <= 1
    expected = pose.render([pose.interpolate(a, b, 0.5)], 64, 64)
    assert torch.equal(hints[1], torch.from_numpy(expected).permute(2, 0, 1).float() / 255)
    assert not PoseConditioning([a], [], 64, 64)


def test_a_frames_candidates_share_one_drawing_of_its_skeleton(monkeypatch):
    a = person({1: (32, 20), 2: (20, 20), 5: (44, 20)})
    cond = PoseConditioning([a], [a.copy()], 64, 64)
    drawn = []
    render = pose.render
    monkeypatch.setattr(pose, "render", lambda *args: drawn.append(args) or render(*args))
    hints = cond.hints([0.25, 0.25, 0.25, 0.5, 0.5])  # two frames, three and two candidates
    assert len(drawn) == 2 and torch.equal(hints[0], hints[2]) and torch.equal(hints[3], hints[4])


def test_the_main_subject_is_the_largest_person_unless_all_people():
    small = person({1: (10, 10), 2: (12, 10), 8: (11, 16)})
    large = person({1: (40, 20), 2: (30, 20), 8: (38, 50)})
    other = person({1: (42, 22), 2: (31, 21), 8: (37, 52)})
    main = PoseConditioning([small, large], [other], 64, 64)
    assert len(main.keypoints_at(0.5)) == 1 and main.people_a[0] is large
    everyone = PoseConditioning([small, large], [other, small + [[1, 1, 0]]], 64, 64, all_people=True)
    assert len(everyone.keypoints_at(0.5)) == 2


def test_a_warp_moves_the_skeleton_with_the_latent():
    from interp.warp import Warp, warp_points
    a = person({1: (32, 20), 2: (20, 20), 5: (44, 20)})
    warp = Warp(zoom=2.0, pan=(0.25, 0.0))
    moving = PoseConditioning([a], [a], 64, 64, warp=warp)
    assert np.allclose(moving.keypoints_at(0.0)[0], a)
    mid = moving.keypoints_at(0.5)[0]
    expected = 0.5 * warp_points(a[:, :2], warp, 0.5, 64, 64) + 0.5 * warp_points(a[:, :2], warp, -0.5, 64, 64)
    assert np.allclose(mid[a[:, 2] > 0, :2], expected[a[:, 2] > 0])
    assert not np.allclose(mid[1, :2], PoseConditioning([a], [a], 64, 64).keypoints_at(0.5)[0][1, :2])


def test_given_keypoints_go_through_the_image_transform(tmp_path):
    """A keypoint marks a dot in the original (wide) image; after cropping or resizing to a square frame the
    dot sits where the placed keypoint says."""
    src = Image.new("RGB", (120, 60), "black")
    ImageDraw.Draw(src).ellipse((67, 15, 73, 21), fill="white")  # centre (70, 18)
    record = {"width": 60, "height": 30, "people": [{"keypoints": person({0: (35, 9)}).tolist()}]}  # half size
    path = tmp_path / "kp.json"
    path.write_text(json.dumps(record))
    for mode in ("crop", "resize"):
        pl = placement(src.size, (64, 64), mode)
        frame = np.asarray(pl.image(src).convert("L"), dtype=np.float64)
        ys, xs = np.nonzero(frame > 100)
        kp = place_keypoints(read_keypoints(path, src.size), pl)[0]
        assert kp[0, 2] > 0
        assert abs(kp[0, 0] - np.average(xs, weights=frame[ys, xs])) < 1.0, mode
        assert abs(kp[0, 1] - np.average(ys, weights=frame[ys, xs])) < 1.0, mode
    record["people"][0]["keypoints"] = person({0: (2, 9)}).tolist()  # cut away by the centre crop
    path.write_text(json.dumps(record))
    assert place_keypoints(read_keypoints(path, src.size), placement(src.size, (64, 64), "crop"))[0][0, 2] == 0
    # Upscaled, a keypoint far inside stays: it is tested where it lands, not mapped a second time.
    record = {"width": 32, "height": 32, "people": [{"keypoints": person({0: (20, 10)}).tolist()}]}
    path.write_text(json.dumps(record))
    kp = place_keypoints(read_keypoints(path, (32, 32)), placement((32, 32), (64, 64), "resize"))[0]
    assert kp[0, 2] > 0 and np.allclose(kp[0, :2], [40.5, 20.5])


def test_textual_inversion_lowers_its_eps_loss(tiny_sd):
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, SIZE, SIZE, generator=g) * 2 - 1
    cond, uncond = torch.randn(2, 77, 64, generator=g) * 0.5, torch.randn(1, 77, 64, generator=g) * 0.5
    z0 = tiny_sd.encode_images(images)
    sampler = DDIM(tiny_sd.schedule, tiny_sd.config.prediction, 10)
    probes = [(k, torch.randn(1, 4, 8, 8, generator=g)) for k in (3, 4, 5)]

    def loss(c, u):
        with torch.no_grad():
            return sum(denoising_loss(tiny_sd, sampler, z0[i:i + 1], k, n, c[i:i + 1], u, 3.0).item()
                       for i in range(2) for k, n in probes)
    new_cond, new_uncond, losses = invert(tiny_sd, images, cond, uncond, steps=10, iterations=15, lr=1e-2, guidance=3.0)
    assert len(losses) == 15 and all(len(pair) == 2 for pair in losses) and not tiny_sd.unet.gradient_checkpointing
    assert new_cond.shape == cond.shape and new_uncond.shape == uncond.shape
    assert loss(new_cond, new_uncond) < 0.95 * loss(cond, uncond)


def test_inversion_keeps_the_activations_where_they_fit_with_the_same_result(tiny_sd, monkeypatch):
    """Where the training step's activations fit in the free memory the backward pass reads them; else each
    block runs again (gradient checkpointing). The two give the same embeddings and losses."""
    g = torch.Generator().manual_seed(5)
    images = torch.rand(2, 3, SIZE, SIZE, generator=g) * 2 - 1
    cond, uncond = torch.randn(2, 77, 64, generator=g) * 0.5, torch.randn(1, 77, 64, generator=g) * 0.5
    step = memory.training_cost(tiny_sd.unet, tiny_sd.latent_shape(SIZE, SIZE), (77, 64)).bytes(2)
    seen, forward = [], tiny_sd.unet.forward

    def recording(*args, **kwargs):
        seen.append(tiny_sd.unet.gradient_checkpointing)
        return forward(*args, **kwargs)
    monkeypatch.setattr(tiny_sd.unet, "forward", recording)
    results = {}
    for free in (int(step / memory.USABLE) + 1, int(step / memory.USABLE) - 1):
        monkeypatch.setattr(memory, "free_bytes", lambda device, free=free: free)
        results[free] = invert(tiny_sd, images, cond, uncond, steps=10, iterations=2, lr=1e-2, guidance=3.0)
    assert seen == [False] * 4 + [True] * 4 and not tiny_sd.unet.gradient_checkpointing
    kept, recomputed = results.values()
    assert torch.equal(kept[0], recomputed[0]) and torch.equal(kept[1], recomputed[1]) and kept[2] == recomputed[2]
    seen.clear()  # told, whatever the memory
    invert(tiny_sd, images, cond, uncond, steps=10, iterations=1, lr=1e-2, guidance=3.0, keep_activations=True)
    assert seen == [False] * 2


def test_the_inversion_loss_is_on_eps_for_a_v_model(tiny_sd):
    assert tiny_sd.config.prediction == "v"
    g = torch.Generator().manual_seed(4)
    z0, noise = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    cond, uncond = torch.randn(1, 77, 64, generator=g), torch.randn(1, 77, 64, generator=g)
    sampler = DDIM(tiny_sd.schedule, "v", 10)
    t = int(sampler.timesteps[5])
    zt = tiny_sd.schedule.q_sample(z0, t, noise)
    with torch.no_grad():
        v_u, v_c = tiny_sd.unet(torch.cat([zt, zt]), torch.tensor([t, t]), torch.cat([uncond, cond])).chunk(2)
        v = v_u + 2.0 * (v_c - v_u)
        a, s = tiny_sd.schedule.at("sqrt_alphas_cumprod", t, zt), tiny_sd.schedule.at("sqrt_one_minus_alphas_cumprod", t, zt)
        expected = F.mse_loss(a * v + s * zt, noise)
        assert torch.allclose(denoising_loss(tiny_sd, sampler, z0, 5, noise, cond, uncond, 2.0), expected, atol=1e-6)


def test_every_inversion_iteration_updates_both_embeddings_and_the_negative(tiny_sd, monkeypatch):
    g = torch.Generator().manual_seed(5)
    images = torch.rand(2, 3, SIZE, SIZE, generator=g) * 2 - 1
    cond, uncond = torch.randn(2, 77, 64, generator=g), torch.randn(1, 77, 64, generator=g)
    updated, step = [], torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        updated.append([p.grad is not None for group in self.param_groups for p in group["params"]])
        return step(self, *args, **kwargs)
    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    new_cond, new_uncond, _ = invert(tiny_sd, images, cond, uncond, steps=10, iterations=3, lr=1e-3)
    # Per iteration: image 1's embedding and the negative, then image 2's and the negative (the authors' order).
    assert updated == [[True, False, True], [False, True, True]] * 3
    assert not torch.equal(new_cond[0], cond[0]) and not torch.equal(new_cond[1], cond[1])
    assert not torch.equal(new_uncond, uncond)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_embeddings_move_in_every_dtype(tiny_sd, dtype, monkeypatch):
    """float16's backward pass runs on a scaled-up loss (gradients of ~1e-5 would flush to zero), the others
    on the loss itself; the embeddings move in all three."""
    sd = copy.copy(tiny_sd)
    sd.unet, sd.vae = copy.deepcopy(tiny_sd.unet).to(dtype), copy.deepcopy(tiny_sd.vae).to(dtype)
    g = torch.Generator().manual_seed(6)
    images = torch.rand(2, 3, SIZE, SIZE, generator=g) * 2 - 1
    cond, uncond = torch.randn(2, 77, 64, generator=g), torch.randn(1, 77, 64, generator=g)
    seen, backward = [], torch.Tensor.backward
    monkeypatch.setattr(torch.Tensor, "backward", lambda self, *a, **k: seen.append(self.item()) or backward(self, *a, **k))
    new_cond, new_uncond, losses = invert(sd, images, cond, uncond, steps=10, iterations=2, lr=1e-3)
    scale = 2.0 ** 16 if dtype == torch.float16 else 1.0
    assert seen == pytest.approx([loss * scale for pair in losses for loss in pair], rel=1e-6)
    assert torch.isfinite(new_cond).all() and torch.isfinite(new_uncond).all()
    assert not torch.equal(new_cond[0], cond[0]) and not torch.equal(new_cond[1], cond[1])
    assert not torch.equal(new_uncond, uncond)


def test_the_inversion_cache_key_covers_what_changes_the_result():
    x = torch.zeros(2, 3, 8, 8)
    model = {"checkpoint": "sha256:x", "prediction": "v", "dtype": "torch.float32", "device": "cpu"}
    settings = dict(steps=200, iterations=200, lr=1e-4, guidance=7.5, seed=0)
    base = cache_key(x, ["p", "p"], "n", model, **settings)
    changed = [cache_key(x + 1, ["p", "p"], "n", model, **settings), cache_key(x, ["p", "q"], "n", model, **settings),
               cache_key(x, ["p", "p"], "m", model, **settings), cache_key(torch.zeros(2, 3, 8, 16), ["p", "p"], "n", model, **settings)]
    changed += [cache_key(x, ["p", "p"], "n", {**model, key: "other"}, **settings) for key in model]
    changed += [cache_key(x, ["p", "p"], "n", model, **{**settings, key: value + 1}) for key, value in settings.items()]
    assert len({base, *changed}) == len(changed) + 1


def test_ranking_keeps_the_best_candidate(tiny_sd, text, latents):
    brightness = lambda images: images.clamp(-1, 1).mean(dim=(1, 2, 3))  # noqa: E731  (a deterministic scorer)
    it = interpolator(tiny_sd, text, candidates=3, scorer=brightness)
    kept, frames = {}, {}

    def on_candidates(index, images, scores, k):
        means = [np.asarray(im, dtype=np.float64).mean() for im in images]
        assert k == int(np.argmax(scores)) == int(np.argmax(means))
        kept[index] = images[k]

    it.run(dict(latents), lambda i, image, z, info: frames.update({i: (image, info)}), on_candidates)
    assert sorted(frames) == [1, 2, 3] == sorted(kept)
    for i, (image, info) in frames.items():
        assert image.tobytes() == kept[i].tobytes() and len(info["scores"]) == 3


def test_a_scorer_is_required_for_several_candidates(tiny_sd, text):
    with pytest.raises(Exception, match="scorer"):
        interpolator(tiny_sd, text, candidates=2)


@pytest.mark.parametrize("name", ["interpolate-only", "interpolate-denoise", "did", "did-no-shared-noise"])
def test_only_the_ours_schemes_rank_candidates(name):
    assert scheme(name).plan(5, steps=10).candidates == (1, 1)
    with pytest.raises(Exception, match="no candidates to rank"):
        scheme(name).plan(5, steps=10, candidates=3)
    assert scheme("ours").plan(5, steps=10, candidates=3).candidates == (3, 3)
    assert scheme("latent-blending") is scheme("did")


@pytest.mark.parametrize("name", list(SCHEMES))
def test_every_scheme_makes_every_frame(tiny_sd, text, latents, name):
    it = interpolator(tiny_sd, text, name)
    result, made = run(it, latents)
    assert sorted(made) == [1, 2, 3] and sorted(result) == [0, 1, 2, 3, 4]
    assert all(result[i].shape == (1, 4, 8, 8) and torch.isfinite(result[i]).all() for i in result)
    assert it.unet_calls == it.steps_to_run({})
    if name.startswith("ours"):
        # The theoretical minimum of UNet calls: one per DDIM step of each round, all frames batched.
        assert it.unet_calls == sum(level.step + 1 for level in it.plan.levels)
    if name == "interpolate-only":
        assert it.unet_calls == 0 and all(made[i]["timestep"] is None for i in made)


def test_eta_noise_belongs_to_each_frame_not_to_its_batch(tiny_sd, text, latents):
    whole = run(interpolator(tiny_sd, text, eta=0.5), latents)[0]
    partial = {**latents, 1: whole[1]}  # frame 1 already made: round 2 runs frame 3 alone
    resumed = run(interpolator(tiny_sd, text, eta=0.5), partial)[0]
    # Equal up to the batch's effect on the UNet's float arithmetic (a batch of 2 against a batch of 1).
    torch.testing.assert_close(whole[3], resumed[3], atol=1e-4, rtol=0)
    assert (whole[3] - run(interpolator(tiny_sd, text, eta=0.5, seed=1), latents)[0][3]).abs().max() > 0.1


def test_controlnet_and_warp_run(tiny_sd, tiny_controlnet, text, latents):
    from interp.warp import Warp
    a = person({1: (32, 20), 2: (20, 20), 5: (44, 20)})
    poses = PoseConditioning([a], [a + [[5, 5, 0]]], SIZE, SIZE)
    it = interpolator(tiny_sd, text, controlnet=tiny_controlnet, poses=poses, warp=Warp(zoom=1.5))
    plain = run(interpolator(tiny_sd, text), latents)[0]
    steered, made = run(it, latents)
    assert not torch.allclose(plain[2], steered[2])
    assert made[2]["control_strength"] == 1.5 and len(made[2]["keypoints"]) == 1
    with pytest.raises(Exception, match="--warp"):
        interpolator(tiny_sd, text, "did", warp=Warp(zoom=1.5))


def test_the_hint_is_encoded_once_per_round_not_at_every_step(tiny_sd, tiny_controlnet, text, latents):
    """The ControlNet's hint encoder depends on the pose drawing alone: each round's batch of hints is
    encoded once (its frames, not their guidance copies), and every step reuses the features."""
    a = person({1: (32, 20), 2: (20, 20), 5: (44, 20)})
    poses = PoseConditioning([a], [a], SIZE, SIZE)
    encoded = []
    def count(module, args):
        if not args[0].is_meta:  # (not the memory estimate's calls)
            encoded.append(args[0].shape[0])
    hook = tiny_controlnet.input_hint_block.register_forward_pre_hook(count)
    it = interpolator(tiny_sd, text, controlnet=tiny_controlnet, poses=poses, steps=20)
    try:
        run(it, latents)
    finally:
        hook.remove()
    rows = [len(frames) for frames in it.plan.rounds]
    assert encoded == rows  # one encoding per round, of one row per frame
    assert it.unet_calls > 2 * len(rows)  # while the UNet ran at every step of every round

# --- the command -----------------------------------------------------------------------------------

def inputs(tmp_path):
    paths = []
    for name, colour, size in (("a", (200, 40, 40), (96, 80)), ("b", (40, 40, 200), (70, 90))):
        im = Image.new("RGBA", size, colour + (255,))
        ImageDraw.Draw(im).ellipse((10, 10, 50, 50), fill=(230, 230, 60, 255))
        paths.append(tmp_path / f"{name}.png")
        im.save(paths[-1])
    return paths


def run_cli(args, capsys):
    try:
        code = interpolate_main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    return code or 0, capsys.readouterr().err


@pytest.fixture
def command(tiny_ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SD_INTERP_CACHE", str(tmp_path / "cache"))
    a, b = inputs(tmp_path)

    def go(out, *extra):
        return run_cli([a, b, "--prompt", "a ball", "--ckpt", tiny_ckpt, "--frames", 5, "--steps", 10, "--eta", 0.3,
                        "--size", SIZE, "--inversion-steps", 2, "--candidates", 1, "--no-pose",
                        "--out", tmp_path / out, *extra], capsys)
    return go


def test_command_writes_everything_and_is_reproducible(command, tmp_path):
    code, err = command("one")
    assert code == 0, err
    run = tmp_path / "one"
    video = json.loads((run / "run.json").read_text())["outputs"]["video"]
    for name in (video, "animation.gif", "contact_sheet.png", "run.json"):
        assert (run / name).is_file(), name
    frames = sorted((run / "frames").glob("*.png"))
    assert [f.name for f in frames] == [f"frame_{i:04d}.png" for i in range(5)]
    assert all(Image.open(f).size == (SIZE, SIZE) for f in frames)
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "complete" and record["settings"]["seed"] == 0
    assert record["unet_calls"] == sum(r["step"] + 1 for r in record["rounds"])
    assert record["settings"]["checkpoint"].startswith(("sha256:", "header-sha256:"))
    frame = record["frames"]["2"]
    assert frame["parents"] == [0, 4] and frame["weight"] == 0.5 and frame["position"] == 0.5
    assert frame["timestep"] == record["rounds"][0]["timestep"] and frame["ddim_steps"] == record["rounds"][0]["step"] + 1
    assert record["scheme"] == "ours" and len(record["inversion_losses"]) == 2
    assert any(note.startswith("textual inversion: 2 iterations, the UNet's activations kept for the backward pass")
               for note in record["notes"]), record["notes"]
    assert record["embeddings"] == "embeddings.safetensors" and (run / "embeddings.safetensors").is_file()
    assert code == 0 and command("two")[0] == 0
    again = sorted((tmp_path / "two" / "frames").glob("*.png"))
    assert [f.read_bytes() for f in frames] == [f.read_bytes() for f in again]
    assert command("three", "--seed", 1)[0] == 0
    other = sorted((tmp_path / "three" / "frames").glob("*.png"))
    assert frames[2].read_bytes() != other[2].read_bytes()
    assert frames[0].read_bytes() == other[0].read_bytes()  # the inputs themselves


@pytest.mark.parametrize("name", ["did", "interpolate-only"])
def test_command_runs_a_baseline(command, tmp_path, name):
    code, err = command(name, "--scheme", name)
    assert code == 0, err
    record = json.loads((tmp_path / name / "run.json").read_text())
    assert record["scheme"] == name and record["status"] == "complete" and len(record["frames"]) == 5
    assert ("inversion_losses" in record) == (name == "did")  # nothing to invert for a scheme without diffusion
    code, err = command(name + "-ranked", "--scheme", name, "--candidates", "3")
    assert code == 2 and "no candidates to rank" in err


def test_a_rerun_with_the_inputs_elsewhere_is_the_same_run(command, tmp_path, tiny_ckpt, capsys):
    """A run's identity is its inputs' content, not how their paths were spelled: the finished run is found
    complete, not refused as another run, and nothing of it is rewritten."""
    import shutil
    assert command("run")[0] == 0
    before = (tmp_path / "run" / "run.json").read_bytes()
    a, b = inputs(tmp_path)
    moved = [shutil.copy(p, tmp_path / f"copy_{i}.png") for i, p in enumerate((a, b))]
    try:
        code = interpolate_main([str(x) for x in [*moved, "--prompt", "a ball", "--ckpt", tiny_ckpt, "--frames", 5,
                                                   "--steps", 10, "--eta", 0.3, "--size", SIZE, "--inversion-steps", 2,
                                                   "--candidates", 1, "--no-pose", "--out", tmp_path / "run"]])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert not code, err
    assert "already holds this run, complete" in out and (tmp_path / "run" / "run.json").read_bytes() == before


def test_command_resumes_after_an_interruption(command, tmp_path, monkeypatch):
    from interp.apps.rundir import RunDir
    assert command("full")[0] == 0
    save = RunDir.save_frame
    calls = []

    def crash_after_three(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return save(self, *args, **kwargs)
    monkeypatch.setattr(RunDir, "save_frame", crash_after_three)
    code, err = command("resumed")
    assert code == 130 and not list((tmp_path / "resumed").glob("video.*"))
    assert "\ninterrupted: run the same command again to resume" in err
    monkeypatch.setattr(RunDir, "save_frame", save)
    code, err = command("resumed")
    assert code == 0, err
    assert "resuming " in err and "3 of 5 frames done" in err
    full = json.loads((tmp_path / "full" / "run.json").read_text())
    resumed = json.loads((tmp_path / "resumed" / "run.json").read_text())
    assert resumed["resumed"] and resumed["unet_calls"] < full["unet_calls"]
    for i in range(5):
        name = f"frames/frame_{i:04d}.png"
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes()
    code, err = command("resumed", "--cfg", 3)
    assert code == 2 and "different settings" in err and "cfg" in err


@pytest.mark.parametrize("extra,message", [
    (["--frames", "2"], "--frames: must be >= 3"),
    (["--round-levels", "0.8,0.6,0.4,0.2"], "4 noise levels were given for 2 rounds"),
    (["--levels", "0.5,1.5"], "0 < LOW <= HIGH < 1"),
    (["--levels", "0.9,0.1"], "0 < LOW <= HIGH < 1"),  # never read as per-round levels
    (["--levels", "0.2,0.4,0.6"], "one level per round: --round-levels"),
    (["--levels", "0.2,0.4", "--round-levels", "0.4,0.2"], "not allowed with argument"),
    (["--cfg", "-1"], "--cfg: must be >= 0"),
    (["--eta", "2"], "--eta: must be from 0 to 1"),
    (["--steps", "0"], "--steps: must be from 1 to 1000"),
    (["--inversion-steps", "-3"], "--inversion-steps: must be >= 0"),
    (["--inversion-lr", "0"], "--inversion-lr: must be > 0"),
    (["--fps", "0"], "--fps: must be > 0"),
    (["--max-batch", "0"], "--max-batch: must be >= 1"),
    (["--seed", "x"], "--seed: expected an integer"),
    (["--control-strength", "1,-1"], "two numbers >= 0"),
    (["--schedule", "bouncy"], "--schedule takes uniform, ease or"),
    (["--schedule", "0,0.5,0.2,0.7,1"], "increase strictly"),
    (["--candidates", "3", "--clip", "nowhere.safetensors"], "not a catalog name"),
    (["--size", "16"], "size must be"),
])
def test_command_rejects_bad_settings(command, extra, message):
    code, err = command("bad", *extra)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err  # no usage dump


def test_command_rejects_bad_images(tiny_ckpt, tmp_path, capsys):
    a, _ = inputs(tmp_path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG but not really")
    for b, message in ((tmp_path / "missing.png", "does not exist"), (broken, "cannot read image")):
        code, err = run_cli([a, b, "--prompt", "x", "--ckpt", tiny_ckpt, "--out", tmp_path / "o"], capsys)
        assert code == 2 and message in err and "Traceback" not in err, err
        assert not (tmp_path / "o" / "run.json").exists()


def test_preview_profile_fills_only_what_was_not_given():
    from interp.apps.options import parse
    from interp.settings import PREVIEW, Settings
    s = parse(["a.png", "b.png", "--prompt", "x", "--preview", "--steps", "30"]).settings
    assert (s.size, s.steps, s.inversion_steps, s.candidates) == (PREVIEW["size"], 30, 50, 1)
    s = parse(["a.png", "b.png", "--prompt", "x"]).settings
    assert s == Settings(prompt="x")  # the method's own defaults
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.cfg = 1.0


def test_help_shows_every_default(capsys):
    from interp.apps.options import parser
    text = parser().format_help()
    for shown in ("(default: 7.5)", "(default: (0.3, 0.55))", "(default: 17)", "(default: (1.0, 1.5))",
                  "(default: ours)", "(default: resize)", "textual inversion (Section 4.2)"):
        assert shown in text, shown


def test_command_detects_poses(command, tmp_path, tiny_dir):
    """Detection through cv2.dnn (a tiny random net in the OpenPose layout) feeds the ControlNet path."""
    from pose_fixtures import write_random_net
    (tmp_path / "openpose").mkdir()
    proto, model = write_random_net(tmp_path / "openpose")
    code, err = command("posed", "--pose", "--controlnet", tiny_dir / "controlnet.safetensors",
                        "--pose-model", proto, model)
    assert code == 0, err
    record = json.loads((tmp_path / "posed" / "run.json").read_text())
    assert any(note.startswith("poses: ") and "people found" in note for note in record["notes"]), record["notes"]
