"""Environment variables scoped to a block (how Tune's and MLflow's settings are given)."""

import os

from boxinst.platform.environment import environment


def test_variables_are_set_in_the_block_and_restored_after(monkeypatch):
    monkeypatch.setenv("BOXINST_TEST_SET", "user")
    monkeypatch.delenv("BOXINST_TEST_UNSET", raising=False)
    values = {"BOXINST_TEST_SET": "ours", "BOXINST_TEST_UNSET": "ours"}

    with environment(values):
        assert os.environ["BOXINST_TEST_SET"] == os.environ["BOXINST_TEST_UNSET"] == "ours"
    assert os.environ["BOXINST_TEST_SET"] == "user" and "BOXINST_TEST_UNSET" not in os.environ

    with environment(values, keep_set=True):  # the user's value wins
        assert os.environ["BOXINST_TEST_SET"] == "user"
        assert os.environ["BOXINST_TEST_UNSET"] == "ours"
    assert "BOXINST_TEST_UNSET" not in os.environ
