"""Installed packages found without importing them (repalign.packages)."""

from pathlib import Path

import numpy as np
import pytest

from repalign.packages import package_dir, package_version


def test_package_dir_is_the_folder_the_import_system_uses():
    assert package_dir("numpy") == Path(np.__file__).parent
    assert package_dir("numpy.linalg") == Path(np.linalg.__file__).parent
    assert package_dir("pytest") == Path(pytest.__file__).parent


def test_package_dir_of_a_module_is_its_folder():
    import json.decoder

    assert package_dir("json.decoder") == Path(json.decoder.__file__).parent


@pytest.mark.parametrize("name", ["no_such_package_xyz", "no_such_package_xyz.sub.module"])
def test_package_dir_of_a_missing_package_is_none(name):
    assert package_dir(name) is None


def test_package_version_reads_the_installed_metadata():
    assert package_version("numpy") == np.__version__
    assert package_version("no-such-distribution-xyz") is None
