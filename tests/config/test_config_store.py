"""ConfigStore: HTTP-facing operations and their errors, persistence, loading, accessors."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
import ujson

from sqlrs_engine.config import CONFIG_FILE_NAME, DEFAULTS, ConfigLoadError, ConfigStore
from sqlrs_engine.errors import ApiError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "state-store"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def store(root: Path) -> ConfigStore:
    return ConfigStore.in_root(root)


def write_config(root: Path, text: str) -> Path:
    path = root / CONFIG_FILE_NAME
    path.write_text(text, encoding="utf-8")
    return path


def on_disk(root: Path) -> Any:
    return ujson.loads((root / CONFIG_FILE_NAME).read_text(encoding="utf-8"))


def raises_api(status: int, code: str, message: str) -> Any:
    return pytest.raises(
        ApiError, check=lambda e: (e.status, e.code, e.message) == (status, code, message)
    )


# -- load ------------------------------------------------------------------------------


def test_missing_file_means_no_overrides(store: ConfigStore, root: Path) -> None:
    assert store.path == root / CONFIG_FILE_NAME
    assert store.get() == {}
    assert store.get(effective=True) == DEFAULTS
    assert not (root / CONFIG_FILE_NAME).exists()  # nothing written until a change


def test_load_existing_overrides(root: Path) -> None:
    write_config(root, '{"log": {"level": "info"}, "custom": [1, 2.5]}')
    store = ConfigStore(root / CONFIG_FILE_NAME)
    assert store.get() == {"log": {"level": "info"}, "custom": [1, 2.5]}
    assert store.get("log.level", effective=True) == "info"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[]", "must hold a JSON object, not an array"),
        ('"x"', "must hold a JSON object, not a string"),
        ("1", "must hold a JSON object, not a number"),
        ("1.5", "must hold a JSON object, not a number"),
        ("true", "must hold a JSON object, not a boolean"),
        ("null", "must hold a JSON object, not null"),
        ("", "is empty"),
        ("  \n", "is empty"),
        ("{", "is not valid JSON"),
        ('{"a": 1} trailing', "is not valid JSON"),
        ('{"a": NaN}', "unusable value: NaN and Infinity are not JSON numbers"),
        ('{"a": ' + "[" * 80 + "]" * 80 + "}", "nested deeper than 64"),
    ],
)
def test_load_rejects_a_non_object_file(root: Path, text: str, reason: str) -> None:
    path = write_config(root, text)
    with pytest.raises(ConfigLoadError) as caught:
        ConfigStore(path)
    assert str(path) in str(caught.value)
    assert reason in str(caught.value)
    assert "remove it to use the defaults" in str(caught.value)


def test_load_rejects_invalid_utf8(root: Path) -> None:
    path = root / CONFIG_FILE_NAME
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ConfigLoadError, match="not valid JSON"):
        ConfigStore(path)


def test_load_rejects_a_directory(root: Path) -> None:
    (root / CONFIG_FILE_NAME).mkdir()
    with pytest.raises(ConfigLoadError, match="cannot read config file"):
        ConfigStore.in_root(root)


# -- GET -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "effective", "expected"),
    [
        (None, False, {"log": {"level": "INFO"}, "list": [1, None]}),
        ("", False, {"log": {"level": "INFO"}, "list": [1, None]}),
        ("  ", False, {"log": {"level": "INFO"}, "list": [1, None]}),
        ("log", False, {"level": "INFO"}),
        ("log.level", False, "INFO"),
        ("list[1]", False, None),
        ("log.level", True, "INFO"),
        ("snapshot.backend", True, "auto"),
        ("cache.capacity", True, DEFAULTS["cache"]["capacity"]),
        ("runtime.host.user", True, None),  # a null default is found
        ("list[0]", True, 1),
    ],
)
def test_get(root: Path, path: str | None, effective: bool, expected: Any) -> None:
    write_config(root, '{"log": {"level": "INFO"}, "list": [1, null]}')
    assert ConfigStore.in_root(root).get(path, effective) == expected


def test_get_effective_whole_tree(root: Path) -> None:
    write_config(root, '{"cache": {"capacity": {"maxBytes": 7}}}')
    tree = ConfigStore.in_root(root).get(None, effective=True)
    assert tree["cache"]["capacity"]["maxBytes"] == 7
    assert tree["cache"]["capacity"]["lowWatermark"] == 0.8
    assert tree["orchestrator"] == {
        "jobs": {"maxIdentical": 2, "maxTaskLogLines": 10_000, "minAge": "5m"}
    }


@pytest.mark.parametrize("path", ["a..b", ".a", "a[", "a[x]", "a[1", "a.", "[0]"])
def test_get_invalid_path(store: ConfigStore, path: str) -> None:
    with raises_api(400, "invalid_argument", "invalid path") as caught:
        store.get(path, effective=True)
    assert caught.value.details  # says what is wrong


@pytest.mark.parametrize(
    ("path", "effective"),
    [
        ("missing", False),
        ("missing", True),
        ("log.level.x", False),
        ("log.level.x", True),
        ("Log.level", False),
        ("Log.level", True),
        ("cache.capacity.nope", False),
        ("runtime.host.binDirs[0]", False),
    ],
)
def test_get_missing_path(store: ConfigStore, path: str, effective: bool) -> None:
    with raises_api(404, "not_found", "path not found"):
        store.get(path, effective)


@pytest.mark.parametrize(
    ("overrides", "path", "value"),
    [
        ("{}", "log.level", "info"),
        ("{}", "orchestrator.jobs.maxIdentical", 2),
        ("{}", "runtime.host.user", None),
        ("{}", "cache.capacity", DEFAULTS["cache"]["capacity"]),
        # An override wins; a sibling key without one still reads as its default.
        ('{"cache": {"capacity": {"maxBytes": 5}}}', "cache.capacity.maxBytes", 5),
        ('{"cache": {"capacity": {"maxBytes": 5}}}', "cache.capacity.lowWatermark", 0.8),
        # A partly overridden object reads as the overrides (as before).
        ('{"cache": {"capacity": {"maxBytes": 5}}}', "cache.capacity", {"maxBytes": 5}),
        ('{"log": {"level": null}}', "log.level", None),
    ],
)
def test_get_known_key_without_override_reads_default(
    root: Path, overrides: str, path: str, value: Any
) -> None:
    write_config(root, overrides)
    store = ConfigStore.in_root(root)
    assert store.get(path) == value
    assert store.get() == ujson.loads(overrides)  # the whole object stays overrides-only


def test_known_key_replaced_by_a_scalar_ancestor_is_not_found(root: Path) -> None:
    write_config(root, '{"cache": 5}')
    with raises_api(404, "not_found", "path not found"):
        ConfigStore.in_root(root).get("cache.capacity.maxBytes")


def test_get_returns_copies(store: ConfigStore) -> None:
    store.patch("a", {"b": [1]})
    store.get("a")["b"].append(2)
    store.get(None, effective=True)["a"]["b"].append(3)
    store.overrides()["a"]["b"].append(4)
    store.effective()["a"]["b"].append(5)
    assert store.get("a") == {"b": [1]}


# -- PATCH -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "raw", "overrides"),
    [
        ("log.level", '"info"', {"log": {"level": "info"}}),
        ("orchestrator.jobs.maxIdentical", "0", {"orchestrator": {"jobs": {"maxIdentical": 0}}}),
        ("cache.capacity.reserveBytes", "null", {"cache": {"capacity": {"reserveBytes": None}}}),
        ("runtime.host.binDirs[1]", '"/b"', None),  # padding makes [0] null -> rejected
        ("a.b[2]", "true", {"a": {"b": [None, None, True]}}),
        ("x", '{"y": [1.5, "s"]}', {"x": {"y": [1.5, "s"]}}),
        ("container.runtime", '"host"', {"container": {"runtime": "host"}}),
    ],
)
def test_patch(store: ConfigStore, root: Path, path: str, raw: str, overrides: Any) -> None:
    value = ujson.loads(raw)
    if overrides is None:
        with raises_api(400, "invalid_argument", "invalid config value"):
            store.patch(path, value)
        assert store.get() == {}
        return
    assert store.patch(path, value) == value
    assert store.get() == overrides
    assert on_disk(root) == overrides


def test_patch_replaces_intermediate_non_maps(store: ConfigStore) -> None:
    store.patch("a", 5)
    store.patch("a.b", 1)
    assert store.get() == {"a": {"b": 1}}


@pytest.mark.parametrize("path", [None, "", "   ", "\t\n"])
def test_patch_requires_a_path(store: ConfigStore, path: str | None) -> None:
    with raises_api(400, "invalid_argument", "path is required") as caught:
        store.patch(path, 1)
    assert caught.value.details is None


@pytest.mark.parametrize("path", ["a..b", ".a", "a[", "a[]", "a[1", "a[1]b", "a.", "[0]", 5, []])
def test_patch_invalid_path(store: ConfigStore, root: Path, path: Any) -> None:
    with raises_api(400, "invalid_argument", "invalid config value") as caught:
        store.patch(path, 1)
    assert (caught.value.details or "").startswith("config path is invalid")
    assert not (root / CONFIG_FILE_NAME).exists()


@pytest.mark.parametrize(
    ("path", "raw", "detail"),
    [
        ("orchestrator.jobs.maxIdentical", "1.0", "maxIdentical must be an integer"),
        ("orchestrator.jobs.maxIdentical", "1e3", "maxIdentical must be an integer"),
        ("orchestrator.jobs.maxIdentical", "true", "maxIdentical must be an integer"),
        ("cache.capacity.maxBytes", "-1", "must be >= 0"),
        ("cache.capacity.highWatermark", "0", "must be a number in (0, 1]"),
        ("cache.capacity.highWatermark", "0.5", "must be less than"),
        ("cache.capacity.minStateAge", '"10"', "missing unit"),
        ("snapshot.backend", '"zfs"', "snapshot.backend must be one of auto, overlay, btrfs, copy"),
        ("container.runtime", '"lxc"', "must be one of auto, docker, podman, host"),
        ("log.level", '"verbose"', "must be one of debug, info, warn, error"),
        ("runtime.host.binDirs", '["relative"]', "must be an absolute directory path"),
        ("http.threads", "2", "integer from 4 to 4096"),
        ("anything", "NaN", "NaN and Infinity"),
        ("anything", "1e400", "NaN and Infinity"),
        ("anything", '"\\ud800"', "unpaired UTF-16 surrogate"),
    ],
)
def test_patch_invalid_value(
    store: ConfigStore, root: Path, path: str, raw: str, detail: str
) -> None:
    with raises_api(400, "invalid_argument", "invalid config value") as caught:
        store.patch(path, ujson.loads(raw))
    details = caught.value.details or ""
    assert details.startswith("config value is invalid: ")
    assert detail in details
    assert store.get() == {}
    assert not (root / CONFIG_FILE_NAME).exists()


def test_patch_depth_including_the_path_is_limited(store: ConfigStore) -> None:
    deep: Any = 1
    for _ in range(60):
        deep = [deep]
    with raises_api(400, "invalid_argument", "invalid config value") as caught:
        store.patch("a.b.c.d.e.f", deep)
    assert "nested deeper" in (caught.value.details or "")


@pytest.mark.parametrize("level", ["INFO", "Warn", "error"])
def test_patch_keeps_log_level_as_written(store: ConfigStore, root: Path, level: str) -> None:
    assert store.patch("log.level", level) == level
    assert on_disk(root) == {"log": {"level": level}}
    assert store.log_level() == level.lower()


def test_patch_whole_section_validates_nested_rules(store: ConfigStore) -> None:
    with raises_api(400, "invalid_argument", "invalid config value"):
        store.patch("cache", {"capacity": {"maxBytes": 1.5}})
    store.patch("cache", {"capacity": {"maxBytes": 15, "highWatermark": 0.7, "lowWatermark": 0.6}})
    assert store.get("cache.capacity.maxBytes", effective=True) == 15


# -- DELETE ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "path", "returned", "after"),
    [
        ({"log": {"level": "warn"}}, "log.level", "info", {"log": {}}),
        ({"log": {"level": "warn"}}, "log", {"level": "info"}, {}),
        ({"custom": 1, "x": 2}, "custom", None, {"x": 2}),
        ({"a": [1, 2, 3]}, "a[0]", 2, {"a": [2, 3]}),  # items shift down
        ({"a": [1, 2, 3]}, "a[2]", None, {"a": [1, 2]}),
        (
            {"runtime": {"host": {"binDirs": ["/a", "/b"]}}},
            "runtime.host.binDirs[0]",
            "/b",
            {"runtime": {"host": {"binDirs": ["/b"]}}},
        ),
        ({"cache": {"capacity": {"maxBytes": 9}}}, "cache.capacity.maxBytes", 0, None),
        ({"log": {"level": None}}, "log.level", "info", {"log": {}}),
    ],
)
def test_delete(
    root: Path, overrides: dict[str, Any], path: str, returned: Any, after: Any
) -> None:
    write_config(root, ujson.dumps(overrides))
    store = ConfigStore.in_root(root)
    assert store.delete(path) == returned
    if after is not None:
        assert store.get() == after
        assert on_disk(root) == after


@pytest.mark.parametrize("path", [None, "", "  "])
def test_delete_requires_a_path(store: ConfigStore, path: str | None) -> None:
    with raises_api(400, "invalid_argument", "path is required"):
        store.delete(path)


@pytest.mark.parametrize("path", ["a..b", "a[", "a[x]"])
def test_delete_invalid_path(store: ConfigStore, path: str) -> None:
    with raises_api(400, "invalid_argument", "invalid path"):
        store.delete(path)


@pytest.mark.parametrize("path", ["log.level", "snapshot.backend", "a[0]", "x.y"])
def test_delete_not_in_overrides(root: Path, path: str) -> None:
    write_config(root, '{"x": 1, "a": {}}')
    store = ConfigStore.in_root(root)
    with raises_api(404, "not_found", "path not found"):
        store.delete(path)  # defaults cannot be deleted; only overrides
    assert store.get() == {"x": 1, "a": {}}


# -- persistence -----------------------------------------------------------------------


def test_file_is_two_space_pretty_json_with_sorted_keys(store: ConfigStore, root: Path) -> None:
    store.patch("snapshot.backend", "copy")
    store.patch("cache.capacity.maxBytes", 1073741824)
    store.patch("cache.capacity.highWatermark", 0.95)
    store.patch("runtime.host.binDirs", ["/usr/lib/postgresql/15/bin"])
    text = (root / CONFIG_FILE_NAME).read_text(encoding="utf-8")
    assert text == (
        "{\n"
        '  "cache": {\n'
        '    "capacity": {\n'
        '      "highWatermark": 0.95,\n'
        '      "maxBytes": 1073741824\n'
        "    }\n"
        "  },\n"
        '  "runtime": {\n'
        '    "host": {\n'
        '      "binDirs": [\n'
        '        "/usr/lib/postgresql/15/bin"\n'
        "      ]\n"
        "    }\n"
        "  },\n"
        '  "snapshot": {\n'
        '    "backend": "copy"\n'
        "  }\n"
        "}\n"
    )


def test_file_mode_and_no_leftover_temp_files(store: ConfigStore, root: Path) -> None:
    for n in range(5):
        store.patch("orchestrator.jobs.maxIdentical", n)
    store.delete("orchestrator.jobs.maxIdentical")
    assert sorted(os.listdir(root)) == [CONFIG_FILE_NAME]
    assert stat.S_IMODE((root / CONFIG_FILE_NAME).stat().st_mode) == 0o600


def test_changes_survive_a_reload(store: ConfigStore, root: Path) -> None:
    store.patch("log.level", "warn")
    store.patch("a[1]", "x")
    store.delete("a[0]")
    again = ConfigStore.in_root(root)
    assert again.get() == {"log": {"level": "warn"}, "a": ["x"]}
    assert again.log_level() == "warn"


def test_replace_is_atomic_rename(
    store: ConfigStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.patch("log.level", "info")
    old_inode = (root / CONFIG_FILE_NAME).stat().st_ino
    seen: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        seen.append((os.fspath(src), os.fspath(dst)))
        assert Path(src).parent == root  # the temp file lives in the same directory
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    store.patch("log.level", "error")
    assert len(seen) == 1 and seen[0][1] == str(root / CONFIG_FILE_NAME)
    assert (root / CONFIG_FILE_NAME).stat().st_ino != old_inode


@pytest.mark.parametrize("operation", ["patch", "delete"])
def test_failed_write_changes_nothing(
    store: ConfigStore, root: Path, monkeypatch: pytest.MonkeyPatch, operation: str
) -> None:
    store.patch("log.level", "info")
    before = (root / CONFIG_FILE_NAME).read_bytes()

    def fail(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with raises_api(500, "internal_error", "cannot write config") as caught:
        if operation == "patch":
            store.patch("log.level", "error")
        else:
            store.delete("log.level")
    assert "No space left on device" in (caught.value.details or "")
    assert store.get() == {"log": {"level": "info"}}  # in memory unchanged
    assert store.log_level() == "info"
    assert (root / CONFIG_FILE_NAME).read_bytes() == before  # on disk unchanged
    assert sorted(os.listdir(root)) == [CONFIG_FILE_NAME]  # temp file removed


def test_failed_fsync_changes_nothing(
    store: ConfigStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", fail)
    with raises_api(500, "internal_error", "cannot write config"):
        store.patch("log.level", "error")
    assert store.get() == {}
    assert os.listdir(root) == []


def test_unwritable_location_is_a_500(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    directory.mkdir()
    store = ConfigStore.in_root(directory)
    directory.rmdir()
    directory.write_text("not a directory")  # the parent is now a regular file
    with raises_api(500, "internal_error", "cannot write config"):
        store.patch("log.level", "info")
    assert store.get() == {}


# -- accessors -------------------------------------------------------------------------


ACCESSORS = [
    "container_runtime",
    "snapshot_backend",
    "max_identical",
    "host_user",
    "host_bin_dirs",
    "http_threads",
    "log_level",
    "expiry_interval",
    "max_task_log_lines",
    "pin_threads",
]
DEFAULT_READINGS = ["auto", "auto", 2, None, [], 8, "info", 1.0, 10_000, True]


def test_accessor_defaults(store: ConfigStore) -> None:
    assert [getattr(store, name)() for name in ACCESSORS] == DEFAULT_READINGS


@pytest.mark.parametrize(
    ("path", "value", "accessor", "expected"),
    [
        ("container.runtime", "host", "container_runtime", "host"),
        ("container.runtime", "podman", "container_runtime", "podman"),
        ("container.runtime", None, "container_runtime", "auto"),
        ("snapshot.backend", "btrfs", "snapshot_backend", "btrfs"),
        ("snapshot.backend", None, "snapshot_backend", "auto"),
        ("orchestrator.jobs.maxIdentical", 0, "max_identical", 0),
        ("orchestrator.jobs.maxIdentical", 7, "max_identical", 7),
        ("orchestrator.jobs.maxIdentical", None, "max_identical", 2),
        ("runtime.host.user", "postgres", "host_user", "postgres"),
        ("runtime.host.user", None, "host_user", None),
        (
            "runtime.host.binDirs",
            ["/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/15/bin/"],
            "host_bin_dirs",
            ["/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/15/bin/"],
        ),
        ("runtime.host.binDirs", [], "host_bin_dirs", []),
        ("runtime.host.binDirs", None, "host_bin_dirs", []),
        ("http.threads", 128, "http_threads", 128),
        ("http.threads", None, "http_threads", 8),
        ("orchestrator.jobs.maxTaskLogLines", 0, "max_task_log_lines", 0),
        ("orchestrator.jobs.maxTaskLogLines", 50, "max_task_log_lines", 50),
        ("orchestrator.jobs.maxTaskLogLines", None, "max_task_log_lines", 10_000),
        ("log.level", "ERROR", "log_level", "error"),
        ("log.level", None, "log_level", "info"),
        ("instances.expiryInterval", "250ms", "expiry_interval", 0.25),
        ("instances.expiryInterval", "0", "expiry_interval", 0.0),
        ("instances.expiryInterval", "-1s", "expiry_interval", 0.0),
        ("instances.expiryInterval", None, "expiry_interval", 1.0),
        ("engine.pinThreads", False, "pin_threads", False),
        ("engine.pinThreads", None, "pin_threads", True),
    ],
)
def test_accessors_read_overrides(
    store: ConfigStore, path: str, value: Any, accessor: str, expected: Any
) -> None:
    store.patch(path, value)
    assert getattr(store, accessor)() == expected


def test_accessors_fall_back_on_unusable_values_from_disk(root: Path) -> None:
    # A hand-edited file is loaded as is (only "must be an object" is checked at startup);
    # the engine still gets usable settings from it.
    write_config(
        root,
        ujson.dumps(
            {
                "container": {"runtime": "lxc"},
                "snapshot": "copy",
                "orchestrator": {"jobs": {"maxIdentical": -3, "maxTaskLogLines": "many"}},
                "runtime": {"host": {"user": "", "binDirs": ["/ok", "rel", 5]}},
                "http": {"threads": 1.5},
                "log": {"level": "loud"},
                "instances": {"expiryInterval": "soon"},
                "engine": {"pinThreads": "no"},
            }
        ),
    )
    store = ConfigStore.in_root(root)
    assert [getattr(store, name)() for name in ACCESSORS] == [
        "auto",
        "auto",
        2,
        None,
        ["/ok"],
        8,
        "info",
        1.0,
        10_000,
        True,
    ]


# -- concurrency -----------------------------------------------------------------------


def test_concurrent_patches_are_all_kept(store: ConfigStore, root: Path) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(10):
                store.patch(f"t{n}.k{i}", i)
                store.get(None, effective=True)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    expected = {f"t{n}": {f"k{i}": i for i in range(10)} for n in range(8)}
    assert store.get() == expected
    assert on_disk(root) == expected
    assert sorted(os.listdir(root)) == [CONFIG_FILE_NAME]
