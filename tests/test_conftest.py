"""tests/conftest.py's isolation: a fast test's CAI_HOME is a temporary folder, never the user's
~/.cache/cai, and a `cai` subprocess inherits it."""

import subprocess
import sys

from conftest import ROOT, USER_CAI_HOME


def test_fast_tests_get_a_temporary_cai_home(_isolated_home, tmp_path_factory):
    from cai.foundation.model_store import cai_home

    assert cai_home() == _isolated_home != USER_CAI_HOME
    assert _isolated_home.is_relative_to(tmp_path_factory.getbasetemp())


def test_a_cai_subprocess_inherits_it(_isolated_home):
    code = "from cai.foundation.model_store import cai_home; print(cai_home())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         check=True).stdout
    assert out.strip() == str(_isolated_home)
