"""strip_control: guest text (attacker-controlled) made safe for the host's terminal."""

from __future__ import annotations

import pytest

from vmsbx.textsafe import strip_control

ESC = "\x1b"
BEL = "\x07"
ST = ESC + "\\"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        pytest.param(f"{ESC}[31mred{ESC}[0m plain", "red plain", id="csi-colour"),
        pytest.param(f"{ESC}[1;38;5;196mbold{ESC}[m", "bold", id="csi-256-colour"),
        pytest.param(f"{ESC}[38;2;255;0;0mrgb{ESC}[39m", "rgb", id="csi-truecolour"),
        pytest.param(f"a{ESC}[Kb", "ab", id="csi-erase-line"),
        pytest.param(f"{ESC}[?25lhidden cursor{ESC}[?25h", "hidden cursor", id="csi-private-mode"),
        pytest.param(f"{ESC}[?1049hswitched", "switched", id="csi-alt-screen"),
        pytest.param(f"{ESC}[>0cq", "q", id="csi-device-attributes-query"),
        pytest.param(f"{ESC}[6n", "", id="csi-cursor-position-report-request"),
    ],
)
def test_csi_sequences_are_removed(raw: str, shown: str) -> None:
    assert strip_control(raw) == shown


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        pytest.param(f"{ESC}[2J{ESC}[Hscreen", "screen", id="clear-and-home"),
        pytest.param(f"{ESC}[10;20Hmoved", "moved", id="absolute-position"),
        pytest.param(f"up{ESC}[Adown{ESC}[3Bright{ESC}[5Cleft{ESC}[2D", "updownrightleft", id="relative"),
        pytest.param(f"{ESC}[s{ESC}[usaved", "saved", id="csi-save-restore"),
        pytest.param(f"line{ESC}[1F{ESC}[2Kover", "lineover", id="previous-line-erase"),
    ],
)
def test_cursor_movement_is_removed(raw: str, shown: str) -> None:
    assert strip_control(raw) == shown


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        pytest.param(f"{ESC}]0;pwned title{BEL}after", "after", id="osc-title-bel"),
        pytest.param(f"{ESC}]2;pwned title{ST}after", "after", id="osc-title-st"),
        pytest.param(f"{ESC}]8;;https://evil.example/{ST}click{ESC}]8;;{ST}", "click", id="osc-8-hyperlink"),
        pytest.param(f"{ESC}]52;c;ZWNobyBwd25lZA=={BEL}x", "x", id="osc-52-clipboard-write"),
        pytest.param(f"before{ESC}]0;never terminated", "before", id="osc-unterminated"),
        pytest.param(
            f"before{ESC}]0;unclosed\nthe next line\n", "before\nthe next line\n", id="osc-ends-at-newline"
        ),
    ],
)
def test_osc_sequences_are_removed_with_their_payload(raw: str, shown: str) -> None:
    assert strip_control(raw) == shown


@pytest.mark.parametrize(
    "c1",
    [
        pytest.param("\x9b", id="CSI"),
        pytest.param("\x9d", id="OSC"),
        pytest.param("\x90", id="DCS"),
        pytest.param("\x9c", id="ST"),
        pytest.param("\x85", id="NEL"),
        pytest.param("\x8d", id="RI"),
        pytest.param("\x9f", id="APC"),
        pytest.param("\x80", id="PAD"),
    ],
)
def test_c1_controls_are_removed(c1: str) -> None:
    assert strip_control(f"a{c1}b") == "ab"


def test_an_8bit_csi_loses_its_introducer() -> None:
    # What is left is inert text: without the introducer the terminal sees "31m" as characters.
    assert strip_control("a\x9b31mb") == "a31mb"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        pytest.param(f"a{ESC}b", "ab", id="esc-before-letter"),
        pytest.param(f"end{ESC}", "end", id="esc-at-end"),
        pytest.param(f"{ESC}{ESC}x", "x", id="double-esc"),
        pytest.param(f"{ESC}cfull reset", "cfull reset", id="ris-loses-esc"),
        pytest.param(f"{ESC}7{ESC}8", "78", id="decsc-decrc-lose-esc"),
        pytest.param(f"{ESC}Mreverse index", "reverse index", id="two-byte-ri"),
        pytest.param(f"{ESC}Ddown", "down", id="two-byte-ind"),
        pytest.param(f"{ESC}P1$r{ST}", "1$r", id="dcs-introducer-and-st"),
    ],
)
def test_bare_and_two_byte_escapes_are_removed(raw: str, shown: str) -> None:
    result = strip_control(raw)
    assert result == shown
    assert ESC not in result


@pytest.mark.parametrize(
    "c0", [chr(code) for code in range(0x20) if chr(code) not in "\t\n"] + ["\x7f"], ids=repr
)
def test_c0_controls_and_del_are_removed(c0: str) -> None:
    assert strip_control(f"a{c0}b") == "ab"


def test_carriage_return_cannot_overwrite_a_line() -> None:
    assert strip_control("safe\rEVIL") == "safeEVIL"


def test_crlf_becomes_newline() -> None:
    assert strip_control("one\r\ntwo\r\n") == "one\ntwo\n"


def test_tabs_newlines_and_unicode_are_kept() -> None:
    text = "col1\tcol2\nzweite Zeile: äöü ß — “quotes” ✓ 日本語 🙂\n\tindented\n"
    assert strip_control(text) == text


def test_plain_text_is_unchanged() -> None:
    text = "Linux version 6.1.0-28-amd64 (debian-kernel@lists.debian.org) #1 SMP [    0.000000] ok"
    assert strip_control(text) == text


def test_empty_string() -> None:
    assert strip_control("") == ""


def test_nothing_escaping_survives_a_mixed_log() -> None:
    raw = (
        f"[  OK  ] Started {ESC}[0;1;39mssh.service{ESC}[0m.\r\n"
        f"{ESC}]0;root@vmsbx: ~{BEL}root@vmsbx:~# \x9b2J\x08\x08ls\r\n"
    )
    result = strip_control(raw)
    assert result == "[  OK  ] Started ssh.service.\nroot@vmsbx:~# 2Jls\n"
    assert not any(ord(ch) < 0x20 and ch not in "\t\n" for ch in result)
    assert not any(0x7F <= ord(ch) <= 0x9F for ch in result)
