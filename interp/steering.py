"""Steering a run (the interactive mode at the end of Section 4.4): a person picks the candidate kept for a
frame, asks for more candidates ("re-rolls", drawn with new seeds), and may give a frame a prompt of its own or
move its pose keypoints before re-rolling. Without a person, CLIP picks (or the first candidate is kept).

Every decision is recorded in run.json under `steering`, as it is made:

    "steering": {"5": {"rolls": [{"prompt": null, "keypoints": null}, {"prompt": "a red ball", ...}],
                       "pick": 9, "by": "person", "prompt": "a red ball", "keypoints": null}}

(`prompt` and `keypoints` at the end: what the frame's next re-roll would use.)

Roll r >= 1 of frame i draws its k candidates from the noise key ("frame", i, "roll", r) with the prompt
and keypoints recorded for it; candidate numbers run over the initial k and then each roll's k in order.
A run that meets a recorded frame again (resumed, or rerun without a person) replays its rolls and pick, so
it makes the same bytes.
"""
import torch

from ldm.errors import UserError


class Candidates:
    """The candidates of one round's frames: the first batch, then whatever re-rolls add.

    `remake(index, roll, prompt, keypoints)` gives k more noisy-then-denoised latents of frame `index`
    (None where the scheme has no fresh noise per frame, so nothing can be re-rolled)."""

    def __init__(self, runner, jobs: list, k: int, remake=None):
        self.runner, self.jobs, self.k, self.remake = runner, jobs, k, remake
        self.latents = {job.index: [] for job in jobs}
        self.images = {job.index: [] for job in jobs}
        self.scores = {job.index: [] for job in jobs}
        self.rolls = {job.index: [] for job in jobs}  # the conditioning of each re-roll, in order
        self.rolling = None  # the frame being re-rolled now, if any

    @property
    def indices(self) -> list:
        return [job.index for job in self.jobs]

    def add(self, index: int, z: torch.Tensor, images: list, scores) -> None:
        self.latents[index] += list(z.split(1))
        self.images[index] += images
        self.scores[index] += [None] * len(images) if scores is None else list(scores)

    def reroll(self, index: int, prompt: str = None, keypoints: list = None) -> None:
        """k more candidates for frame `index`, with a prompt and keypoints of its own if given."""
        if self.remake is None:
            raise UserError(f"the {self.runner.plan.scheme.name} scheme draws no fresh noise per frame: "
                            "there is nothing to re-roll")
        self.rolls[index].append({"prompt": prompt, "keypoints": keypoints})
        steps = next(job.steps for job in self.jobs if job.index == index)
        self.rolling = index
        try:
            with self.runner.counting("reroll", steps):  # a piece of work of its own for the progress hook
                z = self.remake(index, len(self.rolls[index]), prompt, keypoints)
            images, scores = self.runner.decode_and_score(z)
        finally:
            self.rolling = None
        self.add(index, z, images, scores)

    def count(self, index: int) -> int:
        return len(self.images[index])

    def clip_pick(self, index: int) -> int:
        """CLIP's choice for frame `index`: the best-scored candidate (the first when nothing is scored)."""
        scores = self.scores[index]
        if any(s is None for s in scores):
            return 0
        return max(range(len(scores)), key=lambda c: (scores[c], -c))

    def roll_of(self, index: int, candidate: int) -> dict:
        """The conditioning a candidate was made with ({} for the first batch)."""
        roll = candidate // self.k
        return self.rolls[index][roll - 1] if roll else {}


class Steering:
    """The recorded decisions of a run ({frame: {"rolls", "pick", "by"}}) and how a round is decided when
    nobody is asked: recorded rolls replayed, the recorded pick kept, else CLIP's."""

    def __init__(self, record: dict = None, save=None):
        self.record = {int(i): d for i, d in (record or {}).items()}
        self.save = save or (lambda record: None)

    def _save(self) -> None:
        self.save({str(i): d for i, d in sorted(self.record.items())})

    def replay(self, pool: Candidates) -> None:
        """Remake the recorded re-rolls of the round's frames (each with its own recorded conditioning)."""
        for index in pool.indices:
            for roll in self.record.get(index, {}).get("rolls", []):
                pool.reroll(index, roll.get("prompt"), roll.get("keypoints"))

    def _entry(self, index: int) -> dict:
        return self.record.setdefault(index, {"rolls": [], "pick": None, "by": None})

    def conditioning(self, index: int) -> dict:
        """The prompt and keypoints a person set for the frame's next re-roll."""
        entry = self.record.get(index, {})
        return {"prompt": entry.get("prompt"), "keypoints": entry.get("keypoints")}

    def note_conditioning(self, index: int, **fields) -> None:
        self._entry(index).update(fields)
        self._save()

    def note_roll(self, index: int, prompt, keypoints) -> None:
        self._entry(index)["rolls"].append({"prompt": prompt, "keypoints": keypoints})
        self._save()

    def note_pick(self, index: int, candidate: int, by: str) -> None:
        self._entry(index).update(pick=candidate, by=by)
        self._save()

    def forget(self, indices) -> None:
        """Frames to be chosen again (a revised frame and its descendants): their picks are dropped, their
        rolls kept (so the earlier candidates are shown again)."""
        for index in indices:
            if index in self.record:
                self.record[index].update(pick=None, by=None)
        self._save()

    def recorded_pick(self, pool: Candidates, index: int):
        pick = self.record.get(index, {}).get("pick")
        return pick if pick is not None and 0 <= pick < pool.count(index) else None

    def __call__(self, pool: Candidates) -> dict:
        """{frame: candidate} for a round with nobody to ask."""
        self.replay(pool)
        return {i: p if (p := self.recorded_pick(pool, i)) is not None else pool.clip_pick(i) for i in pool.indices}
