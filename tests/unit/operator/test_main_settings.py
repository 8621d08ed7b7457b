"""The operator's thread settings are refused by name when not whole numbers >= 1."""

from __future__ import annotations

import pytest
from ebbtide_operator.main import positive_int


def test_thread_counts_default_parse_and_name_bad_values():
    assert positive_int({}, "EBBTIDE_SCALE_THREADS", 4) == 4
    assert positive_int({"EBBTIDE_SCALE_THREADS": "2"}, "EBBTIDE_SCALE_THREADS", 4) == 2
    for bad in ("0", "-3", "two", "1.5"):
        with pytest.raises(ValueError, match="EBBTIDE_SCALE_THREADS"):
            positive_int({"EBBTIDE_SCALE_THREADS": bad}, "EBBTIDE_SCALE_THREADS", 4)
