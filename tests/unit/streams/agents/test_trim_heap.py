"""trim_heap gives freed heap pages back where glibc is there, and is a no-op where it is not."""

import ctypes

from streams.agents import runtime


def test_trim_heap_returns_freed_pages(monkeypatch):
    monkeypatch.setattr(runtime, "_LIBC", None)
    calls = []
    monkeypatch.setattr(ctypes, "CDLL", lambda name: type("Libc", (), {"malloc_trim": lambda self, pad: calls.append(pad)})())
    runtime.trim_heap()
    runtime.trim_heap()
    assert calls == [0, 0]


def test_trim_heap_without_glibc_does_nothing(monkeypatch):
    monkeypatch.setattr(runtime, "_LIBC", None)

    def no_libc(name):
        raise OSError(name)

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    runtime.trim_heap()
    assert runtime._LIBC is False
    runtime.trim_heap()  # remembered: not looked up again


def test_trim_heap_on_this_machine():
    runtime.trim_heap()  # the real call (glibc here): must not raise
