"""Headless napari tests: Qt's offscreen platform, set before any QApplication exists.

Skipped (not collected) where napari, a Qt binding or pytest-qt is missing: ``pip install -e '.[napari-test]'``.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

try:  # Qt itself can be installed but unusable (missing system libraries): skip rather than error
    import napari  # noqa: F401
    import pytestqt  # noqa: F401
    import qtpy.QtWidgets  # noqa: F401
except Exception:  # noqa: BLE001
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture
def make_viewer(qtbot):
    """A napari ViewerModel: layers, dims and camera as the widgets see them, without the OpenGL canvas
    (Qt's offscreen platform has no OpenGL; the widgets only use the model)."""
    from napari.components import ViewerModel
    from npe2 import PluginManager

    PluginManager.instance().discover()  # installed manifests (ours: sample data), as napari does at start-up
    made = []

    def make() -> ViewerModel:
        made.append(ViewerModel())
        return made[-1]

    yield make
    for viewer in made:
        viewer.layers.clear()


@pytest.fixture
def errors():
    """The messages of the error notifications shown during the test (napari's notification manager)."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    seen: list[str] = []

    def keep(notification) -> None:
        if notification.severity == NotificationSeverity.ERROR:
            seen.append(str(notification.message))

    notification_manager.notification_ready.connect(keep)
    yield seen
    notification_manager.notification_ready.disconnect(keep)


@pytest.fixture(autouse=True)
def _dataset_cache(tmp_path_factory, monkeypatch):
    # sample data must not write into the user's cache
    monkeypatch.setenv("ISCL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "iscl-cache"))
