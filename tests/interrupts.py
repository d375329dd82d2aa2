"""Interrupting a prune run at a chosen step (shared by the CLI and security tests)."""


def interrupted_after_pruning(render_card):
    """``render_card`` interrupted where the run renders the final card (the check before pruning,
    with nothing measured yet, goes through)."""

    def render(recipe, report, *args, **kwargs):
        if report.params_before:
            raise KeyboardInterrupt
        return render_card(recipe, report, *args, **kwargs)

    return render


def interrupt_after_first_package(monkeypatch):
    """``DiskState.package_done`` saves the first package's progress, then the run is interrupted (Ctrl-C);
    returns the original method, to put back with ``monkeypatch.setattr`` before resuming."""
    from obsdiff_hub.zoo import resume

    original = resume.DiskState.package_done

    def crash_after_first(self, index, model, report):
        original(self, index, model, report)
        raise KeyboardInterrupt

    monkeypatch.setattr(resume.DiskState, "package_done", crash_after_first)
    return original
