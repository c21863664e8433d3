"""``Kind``: values, names, parsing and its errors."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nspool import Kind, KindError, NamespaceError
from nspool.kinds import ALL_KINDS, SETNS_ORDER

SINGLES = list(SETNS_ORDER)


def test_values_are_the_kernels_clone_flags() -> None:
    """Each kind's value is its CLONE_NEW* flag (as os exposes them on 3.12+)."""
    expected = {
        Kind.CGROUP: 0x02000000,
        Kind.IPC: 0x08000000,
        Kind.MNT: 0x00020000,
        Kind.NET: 0x40000000,
        Kind.PID: 0x20000000,
        Kind.TIME: 0x00000080,
        Kind.USER: 0x10000000,
        Kind.UTS: 0x04000000,
    }
    assert {k: int(k) for k in expected} == expected
    for kind in expected:
        name = "CLONE_NEWNS" if kind is Kind.MNT else f"CLONE_NEW{kind.name}"
        if hasattr(os, name):
            assert getattr(os, name) == int(kind)


def test_names_are_those_of_proc_ns() -> None:
    """Every kind's name is a link in /proc/self/ns."""
    names = {k.proc_name for k in SINGLES}
    assert names == {"cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts"}
    assert names <= set(os.listdir("/proc/self/ns"))
    assert Kind.PID.for_children_name == "pid_for_children"
    assert Kind.TIME.for_children_name == "time_for_children"
    assert Kind.NET.for_children_name == "net"


def test_setns_order_covers_every_kind_once() -> None:
    """The entry order has user first and mnt last, each kind once."""
    assert sorted(SETNS_ORDER, key=int) == sorted(SINGLES, key=int)
    assert len(set(SETNS_ORDER)) == 8
    assert SETNS_ORDER[0] is Kind.USER
    assert SETNS_ORDER[-1] is Kind.MNT
    assert list((Kind.MNT | Kind.NET | Kind.PID).singles()) == [Kind.PID, Kind.NET, Kind.MNT]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("net", Kind.NET),
        ("net,uts", Kind.NET | Kind.UTS),
        ("NET | uts", Kind.NET | Kind.UTS),
        ("mount ipc", Kind.MNT | Kind.IPC),
        ("", Kind(0)),
        (["net", Kind.PID], Kind.NET | Kind.PID),
        (Kind.NET | Kind.UTS, Kind.NET | Kind.UTS),
        (0x40000000, Kind.NET),
    ],
)
def test_parse(text: object, expected: Kind) -> None:
    """Names, lists, ints and kinds all parse."""
    assert Kind.parse(text) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["netz", "net,foo", "pid_for_children", 0x1, 0x40000001, True])
def test_parse_rejects_unknown_names_and_stray_bits(bad: object) -> None:
    """Unknown names and non-namespace bits are a KindError naming the input."""
    with pytest.raises(KindError) as info:
        Kind.parse(bad)  # type: ignore[arg-type]
    assert isinstance(info.value, NamespaceError)
    assert isinstance(info.value, ValueError)
    assert info.value.errno == 22
    assert "Kind.parse" in str(info.value)


def test_require_refuses_an_empty_set() -> None:
    """An empty kind set is an error where kinds are needed, naming the caller."""
    with pytest.raises(KindError, match=r"unshare\(\).*no namespace kind"):
        Kind.require("", what="unshare")
    assert Kind.require("net", what="x") is Kind.NET


def test_str_and_all() -> None:
    """str() gives the /proc names in entry order; all() is every kind."""
    assert str(Kind.NET | Kind.UTS) == "uts,net"
    assert str(Kind(0)) == "none"
    assert Kind.all() == ALL_KINDS
    assert list(Kind.all().singles()) == list(SETNS_ORDER)


def test_from_nstype() -> None:
    """NS_GET_NSTYPE values map back to kinds; unknown ones are a KindError."""
    assert Kind.from_nstype(0x40000000) is Kind.NET
    with pytest.raises(KindError):
        Kind.from_nstype(0x1)


def test_proc_name_of_a_combination_is_an_error() -> None:
    """Only a single kind has a /proc name."""
    with pytest.raises(KindError):
        _ = (Kind.NET | Kind.UTS).proc_name


@given(st.sets(st.sampled_from(SINGLES)))
def test_str_parse_round_trip(kinds: set[Kind]) -> None:
    """Any set of kinds survives str() then parse()."""
    combined = Kind(sum(int(k) for k in kinds))
    assert Kind.parse(str(combined) if kinds else "") == combined
