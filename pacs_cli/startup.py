"""What a pacs process of its own loads of pydicom and pynetdicom at start-up, and what it leaves out.

Start-up is most of a one-shot command's time (a `pacs storescu` of 500 CT images spends ~0.25 s
before its first byte, bench/README.md), and most of that is importing pydicom and pynetdicom. The
root group (:mod:`pacs_cli.cli`) sets these up before any command imports either package; a library
caller or a test run gets both packages as they come.
"""

from __future__ import annotations

import importlib
import os
import sys
import types


def lean_process(pixel_free: bool) -> None:
    """Everything below, for a command run by ``pacs``; numpy stays out only for a command that
    handles no pixel data (storescu decides later, by its --decompress: :func:`keep_out`)."""
    keep_out("requests")
    load_when_used("pydicom.examples")
    load_when_used("pydicom.data", "get_palette_files")
    load_unchecked("pynetdicom")
    version_from_dist_info("pydicom")
    version_from_dist_info("pynetdicom")
    if pixel_free:
        keep_out("numpy")


def keep_out(name: str) -> None:
    """Have pydicom load as though the package ``name`` (numpy or requests) were not installed.

    Any pydicom import imports both (``pydicom.config`` loads the pixel data handlers, those load
    ``pydicom.data`` and its test-file downloader), and no pydicom setting skips them: measured, they
    were 0.3 s of a 0.74 s `pacs echo`, and 0.2 s of every `pacs storescu`. pydicom supports installs
    without either: numpy only decodes and encodes pixel data and makes numpy-valued DS/IS (off by
    default), requests only downloads pydicom's test files (urllib does it otherwise), and pynetdicom
    uses neither. ``None`` in ``sys.modules`` is how the import system is told to fail an import. Only
    before pydicom's first import and only in a process of our own (``pacs_cli.cli.main``): a library
    caller or a test run keeps its numpy.
    """
    if "pydicom" not in sys.modules:
        sys.modules.setdefault(name, None)


class _LoadedWhenUsed(types.ModuleType):
    """Stands in for a module of pydicom's until one of its attributes is asked for."""

    def __getattr__(self, attribute: str):
        if attribute.startswith("__"):  # the import system asking whether this is a package (__path__)
            raise AttributeError(attribute)
        return getattr(self.real(), attribute)

    def real(self) -> types.ModuleType:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return importlib.import_module(self.__name__)

    def stand_in(self, function: str) -> None:
        """Bind ``function`` to a call that loads the real module first."""
        setattr(self, function, lambda *args, **kwargs: getattr(self.real(), function)(*args, **kwargs))


def load_when_used(name: str, *functions: str) -> None:
    """Have pydicom's module ``name`` load when first used rather than with pydicom.

    Any pydicom import loads ``pydicom.examples``, which looks up 13 test files' paths, and
    ``pydicom.data``, which brings urllib.request and http.client to download them: 13-16 ms of
    every command's start-up (`pacs storescu` of one file), for files no command reads.
    ``functions`` are the names pydicom imports from the module at its own import (``from
    pydicom.data import get_palette_files``): stand-ins that load the real module when called. As
    :func:`keep_out`: only before pydicom's first import, only in a process of our own.
    """
    if "pydicom" not in sys.modules:
        module = _LoadedWhenUsed(name)
        for function in functions:
            module.stand_in(function)
        sys.modules.setdefault(name, module)


class _WrappedLoader:
    """A module's loader, its ``exec_module`` run in a setting of the subclass's."""

    def __init__(self, loader) -> None:
        self._loader = loader

    def __getattr__(self, attribute: str):  # resources, source: as the real loader gives them
        return getattr(self._loader, attribute)

    def create_module(self, spec):
        return self._loader.create_module(spec)


class _UncheckedWhileLoading(_WrappedLoader):
    """A module's loader, run with pydicom's value validation off (see :func:`load_unchecked`)."""

    def exec_module(self, module) -> None:
        from pydicom import config

        mode = config.settings.reading_validation_mode
        config.settings.reading_validation_mode = config.IGNORE
        try:
            self._loader.exec_module(module)
        finally:
            config.settings.reading_validation_mode = mode


class _FirstImportWrapped:
    """Finds ``name`` once, as the import system would, with its loader wrapped in ``wrapper``."""

    def __init__(self, name: str, wrapper: type[_WrappedLoader]) -> None:
        self.name, self.wrapper = name, wrapper

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = self.wrapper(spec.loader)
        return spec


def load_unchecked(name: str) -> None:
    """Have the package ``name`` (pynetdicom) load with pydicom's value validation off, put back after.

    pynetdicom builds ~370 presentation contexts at import, each UID a pydicom ``UID`` checked by
    regular expressions: ~10 ms of every network command's start-up, for pynetdicom's own constants.
    Those commands turn the validation off anyway once they make an AE
    (:func:`pacs_cli.dimse.ae.configure_libraries`); here it is off only while the package's modules
    load. As :func:`keep_out`: only in a process of our own, before the package's first import.
    """
    if name not in sys.modules:
        sys.meta_path.insert(0, _FirstImportWrapped(name, _UncheckedWhileLoading))


class _VersionFromDistInfoWhileLoading(_WrappedLoader):
    """A module's loader, run with a stand-in ``importlib.metadata`` (see :func:`version_from_dist_info`)."""

    def exec_module(self, module) -> None:
        if "importlib.metadata" in sys.modules:  # loaded already: nothing to save
            self._loader.exec_module(module)
            return
        stand_in = sys.modules["importlib.metadata"] = _metadata_stand_in()
        try:
            self._loader.exec_module(module)
        finally:
            if sys.modules.get("importlib.metadata") is stand_in:
                del sys.modules["importlib.metadata"]


def _metadata_stand_in() -> types.ModuleType:
    """``importlib.metadata`` as far as a ``_version`` module needs it: ``version``, and the real module
    for anything else it asks."""
    stand_in = types.ModuleType("importlib.metadata")
    stand_in.version = _dist_info_version
    stand_in.__getattr__ = _from_real_metadata
    return stand_in


def _dist_info_version(name: str) -> str:
    """The version in the name of the one ``<name>-<version>.dist-info`` beside the package, where pip
    puts it (PEP 376); importlib.metadata's answer otherwise (an egg, an editable pydicom, two of them)."""
    package = sys.modules.get(name)
    folder = os.path.dirname(os.path.dirname(getattr(package, "__file__", None) or ""))
    prefix = name.replace("-", "_") + "-"
    try:
        found = [entry for entry in os.listdir(folder) if entry.startswith(prefix) and entry.endswith(".dist-info")]
    except OSError:
        found = []
    if len(found) == 1:
        return found[0][len(prefix):-len(".dist-info")]
    return _real_metadata().version(name)


def _from_real_metadata(attribute: str):
    if attribute.startswith("__"):  # the import system asking whether this is a package (__path__)
        raise AttributeError(attribute)
    return getattr(_real_metadata(), attribute)


def _real_metadata() -> types.ModuleType:
    """importlib.metadata itself, the stand-in taken out of the way first."""
    if getattr(sys.modules.get("importlib.metadata"), "version", None) is _dist_info_version:
        del sys.modules["importlib.metadata"]
    return importlib.import_module("importlib.metadata")


def version_from_dist_info(name: str) -> None:
    """Have the package ``name`` (pydicom, pynetdicom) learn its own version at import without
    importlib.metadata.

    Both packages' ``_version`` ask ``importlib.metadata.version(name)``, whose import (the email
    parser, zipfile, csv, ...) was ~7 ms of every command's start-up (`pacs echo` 128 ms in all),
    for a version the name of the package's dist-info directory gives. While ``<name>._version`` loads,
    ``importlib.metadata`` is a stand-in whose ``version`` reads that name, and the real module
    answers where that does not work; afterwards it is the real module again for whoever imports
    it. As :func:`keep_out`: only in a process of our own, before the package's first import.
    """
    if name not in sys.modules:
        sys.meta_path.insert(0, _FirstImportWrapped(f"{name}._version", _VersionFromDistInfoWhileLoading))
