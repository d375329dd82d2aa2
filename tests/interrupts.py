"""Interrupting a prune run at a chosen step (shared by the CLI and security tests)."""


def interrupted_after_pruning(render_card):
    """``render_card`` interrupted where the run renders the final card (the check before pruning,
    with nothing measured yet, goes through)."""

    def render(recipe, report, *args, **kwargs):
        if report.params_before:
            raise KeyboardInterrupt
        return render_card(recipe, report, *args, **kwargs)

    return render
