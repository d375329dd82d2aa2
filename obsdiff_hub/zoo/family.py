"""A family of checkpoints (one folder per member, as ``prune -r A -r B … --out DIR`` writes it) as
one Hub repo: each member on its own branch (named after its recipe) with its own tag, and on
``main`` a family card whose table and quality-vs-sparsity plot come from the members' files.

A branch per member keeps plain diffusers loading working (``DiffusionPipeline.from_pretrained(repo,
revision=MEMBER)``, a member's files at the repo root as usual) and each member's card, manifest,
``pull`` and ``verify=True`` exactly those of a single checkpoint.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from ..errors import HubError, InputError, ObsDiffError
from ..hub import RESERVED_REFS, HubClient, PushResult, check_ref_name, check_repo_id
from ..storage.files import is_regular_file
from ..storage.manifest import MANIFEST, build_manifest, manifest_bytes
from .cards import card_for_folder
from .evaluation import EvalResult
from .metrics import MetricRow
from .publishing import publish
from .recipes import load_recipe
from .records import CARD_FILE, EVAL_FILE, RECIPE_FILE, check_checkpoint_folder, read_record, read_run_record
from .resume import PARTIAL_SUFFIX
from .sampling import image_bytes

PLOT_FILE = "quality.png"


@dataclass
class Member:
    """One member folder, read for the family card: its recipe's name, tag and sparsity, its
    parameter counts, and its evaluation rows (empty when it was not evaluated)."""

    folder: Path
    name: str
    tag: str
    sparsity: str
    ratio: float
    params_before: int
    params_after: int
    zeroed: int
    metrics: list[MetricRow]


def is_family(directory: Path) -> bool:
    """A folder holding pruned checkpoints in sub-folders rather than being one."""
    if not directory.is_dir() or (directory / "model_index.json").exists() or (directory / "config.json").exists():
        return False
    return any(is_regular_file(p / RECIPE_FILE) for p in directory.iterdir() if p.is_dir() and not p.is_symlink())


def family_members(directory: Path) -> list[Member]:
    """The member folders of a family folder (sorted by sparsity), or an :class:`InputError`."""
    if (
        directory.is_symlink()
        or not directory.is_dir()
        or (directory / "model_index.json").exists()
        or (directory / "config.json").exists()
    ):
        raise InputError(
            f"{directory} is not a family folder (one pruned checkpoint per sub-folder, as a family run writes it)"
        )
    members = []
    for folder in sorted(
        p
        for p in directory.iterdir()
        if p.is_dir() and not p.name.startswith(".") and not p.name.endswith(PARTIAL_SUFFIX)
    ):
        if folder.is_symlink():
            raise InputError(f"{folder} is a link; a family's members are folders inside it")
        check_checkpoint_folder(folder)
        recipe = load_recipe(folder / RECIPE_FILE)
        report = read_run_record(folder).report
        metrics = (
            read_record(folder / EVAL_FILE, EvalResult.from_dict).metrics
            if is_regular_file(folder / EVAL_FILE)
            else []
        )
        prune = recipe.prune
        ratio = prune.n / prune.m if prune.granularity == "n:m" else prune.sparsity
        members.append(
            Member(
                folder,
                recipe.name,
                recipe.tag,
                prune.ratio_label,
                float(ratio),
                report.params_before,
                report.params_after,
                report.zeroed_weights,
                metrics,
            )
        )
    if not members:
        raise InputError(f"{directory} holds no pruned checkpoint folders")
    names = [m.name for m in members]
    if len(set(names)) < len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise InputError(
            f"two members of {directory} were made by recipe {twice}; a family publishes one member per recipe "
            "(its branch and tag)"
        )
    return sorted(members, key=lambda m: (m.ratio, m.name))


def quality_plot(members: list[Member], width: int = 640, height: int = 400) -> Image.Image | None:
    """The first metric every member measured, against sparsity, with its 95% intervals (None when
    the members share no metric)."""
    names = [
        row.name for row in members[0].metrics if all(any(r.name == row.name for r in m.metrics) for m in members)
    ]
    if not names or len(members) < 2:
        return None
    name = names[0]
    rows = [next(r for r in m.metrics if r.name == name) for m in members]
    xs = [m.ratio for m in members]
    lows = [r.ci95[0] for r in rows]
    highs = [r.ci95[1] for r in rows]
    y0, y1 = min(lows), max(highs)
    y0, y1 = (y0 - 1, y1 + 1) if y1 - y0 < 1e-9 else (y0 - 0.05 * (y1 - y0), y1 + 0.05 * (y1 - y0))
    x0, x1 = min(xs), max(xs)
    x1 = x1 if x1 > x0 else x0 + 1
    left, right, top, bottom = 70, width - 20, 30, height - 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    def at(x: float, y: float) -> tuple[float, float]:
        return left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top)

    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")
    draw.text((left, 8), f"{rows[0].label} vs sparsity (95% intervals)", fill="black")
    for value in (y0, (y0 + y1) / 2, y1):
        draw.text((4, at(x0, value)[1] - 6), f"{value:.3g}", fill="black")
    for member, low, high, row in zip(members, lows, highs, rows):
        x, y = at(member.ratio, row.pruned)
        draw.line([at(member.ratio, low), at(member.ratio, high)], fill="gray", width=2)
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill="navy")
        draw.text((x - 12, bottom + 8), member.sparsity, fill="black")
    draw.line([at(m.ratio, r.pruned) for m, r in zip(members, rows)], fill="navy", width=2)
    return image


def family_card(members: list[Member], repo_id: str, plot: bool) -> str:
    """The family card on ``main``: how to load each member, and what each measured."""
    metric_names = sorted({(r.name, r.label) for m in members for r in m.metrics})
    header = "| member | load with `revision=` | sparsity | parameters | non-zero parameters |" + "".join(
        f" {label} |" for _, label in metric_names
    )
    lines = [
        "---",
        "library_name: diffusers",
        "tags:",
        "- obsdiff-hub",
        "- pruned",
        "---",
        "",
        f"# {repo_id.split('/')[-1]}: a family of pruned checkpoints",
        "",
        "Every member lives on its own branch, with its own model card, recipe, report, sha256 manifest and tag:",
        "",
        "```python",
        "import obsdiff_hub  # structured members load their pruned shapes",
        "from diffusers import DiffusionPipeline",
        f'pipe = DiffusionPipeline.from_pretrained("{repo_id}", revision="{members[-1].name}")',
        "```",
        "",
        header,
        "|" + "---|" * (5 + len(metric_names)),
    ]
    for m in members:
        cells = []
        for name, _ in metric_names:
            row = next((r for r in m.metrics if r.name == name), None)
            cells.append(f"{row.pruned:.4g} [{row.ci95[0]:.4g}, {row.ci95[1]:.4g}]" if row else "not measured")
        lines.append(
            f"| {m.name} | `{m.name}` (tag `{m.tag}`) | {m.sparsity} | {m.params_before:,} → {m.params_after:,} "
            f"| {m.params_after - m.zeroed:,} |" + "".join(f" {c} |" for c in cells)
        )
    if plot:
        lines += ["", f"![quality vs sparsity]({PLOT_FILE})"]
    lines += [
        "",
        "Metrics are each member's `eval.json` (95% bootstrap intervals); see each member's card for how they were "
        "measured.",
        "",
    ]
    return "\n".join(lines)


def check_publishable(members: list[Member], repo_id: str, client: HubClient) -> None:
    """Everything a family push needs, checked before its first commit: every card renders, every member's
    branch and tag is a valid ref (and no member is called ``main``, the family card's branch), no two tags
    collide, and none of the tags exists on the repo yet."""
    tags = []
    for m in members:
        card_for_folder(m.folder, repo_id)
        check_ref_name(m.name, "member (branch)", reserved=RESERVED_REFS)
        tags.append(check_ref_name(load_recipe(m.folder / RECIPE_FILE).tag, f"{m.name}'s tag"))
    names = [m.name for m in members]
    refs = tags + names
    if len(set(refs)) < len(refs):
        twice = next(r for r in refs if refs.count(r) > 1)
        raise InputError(f"{twice} would name two refs (members' branches and tags); rename a member")
    branches, existing = client.refs(repo_id)
    taken = sorted(set(tags) & existing)
    if taken:
        raise HubError(f"tag {taken[0]} already exists on {repo_id}; nothing was pushed (bump the recipe's version)")
    clash = sorted((set(tags) & branches) | (set(names) & existing))
    if clash:
        raise HubError(
            f"{clash[0]} already names a branch or tag on {repo_id}; nothing was pushed (rename the member)"
        )


def half_published(repo_id: str, pushed: dict[str, PushResult], failed: str, error: Exception) -> str:
    """What a family push that stopped part-way has published, and how to finish or undo it."""
    if not pushed:
        return f"{failed} could not be pushed, nothing was published: {error}"
    done = ", ".join(f"{name} (branch {name}, tag {result.tag})" for name, result in pushed.items())
    return (
        f"{failed} could not be pushed ({error}); already published on {repo_id}: {done}. To finish, fix the cause "
        "and push the remaining members with `obsdiff-hub push MEMBER --repo-id ... --branch NAME`; to undo, delete "
        "those branches and tags (HfApi().delete_branch / delete_tag)"
    )


def publish_family(
    directory: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
) -> tuple[dict[str, PushResult], PushResult]:
    """Push every member to its branch (tagged ``NAME-vVERSION``), then the family card to ``main``;
    returns the members' pushes by branch, and the card's."""
    directory = Path(directory)
    check_repo_id(repo_id, namespaced=True)
    members = family_members(directory)
    client = HubClient(endpoint, token)
    check_publishable(members, repo_id, client)
    plot = quality_plot(members)
    in_memory = {CARD_FILE: family_card(members, repo_id, plot is not None).encode("utf-8")}
    if plot is not None:
        in_memory[PLOT_FILE] = image_bytes(plot)
    pushed: dict[str, PushResult] = {}
    for m in members:
        try:
            pushed[m.name] = publish(m.folder, repo_id, private=private, branch=m.name, token=token, endpoint=endpoint)
        except ObsDiffError as error:
            raise HubError(half_published(repo_id, pushed, m.name, error)) from error
    with tempfile.TemporaryDirectory() as empty:
        in_memory[MANIFEST] = manifest_bytes(build_manifest(empty))  # no weights on main: nothing to verify there
        try:
            card = client.push(
                Path(empty),
                repo_id,
                in_memory=in_memory,
                tag=None,
                private=private,
                commit_message=f"family card: {', '.join(m.name for m in members)}",
                tag_message="",
            )
        except ObsDiffError as error:
            raise HubError(half_published(repo_id, pushed, "the family card on main", error)) from error
    return pushed, card


__all__ = ["Member", "family_card", "family_members", "is_family", "publish_family", "quality_plot"]
