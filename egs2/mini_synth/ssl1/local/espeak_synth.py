#!/usr/bin/env python3
"""Offline speech synthesis with the espeak-ng library shipped by ``espeakng-loader``.

The shared library and its voice data come from the ``espeakng-loader`` pip
package, so no system espeak installation and no downloads are needed.  The
library is driven through :mod:`ctypes` in synchronous mode: samples are
collected by a synthesis callback, then resampled from espeak's native rate
(22050 Hz) to 16 kHz.

Only one :class:`EspeakSynth` may exist per process (espeak-ng keeps global
state); use one process per parallel job.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import List, Optional

import numpy as np

# espeak_AUDIO_OUTPUT
AUDIO_OUTPUT_SYNCHRONOUS = 2
# espeak_PARAMETER
espeakRATE, espeakVOLUME, espeakPITCH, espeakRANGE = 1, 2, 3, 4
espeakWORDGAP = 7
# espeak_POSITION_TYPE
POS_CHARACTER = 1
# flags
espeakCHARS_UTF8 = 1
espeakINITIALIZE_DONT_EXIT = 0x8000
# espeak_ERROR
EE_OK, EE_INTERNAL_ERROR, EE_BUFFER_FULL, EE_NOT_FOUND = 0, -1, 1, 2
_ERRORS = {EE_INTERNAL_ERROR: "EE_INTERNAL_ERROR", EE_BUFFER_FULL: "EE_BUFFER_FULL",
           EE_NOT_FOUND: "EE_NOT_FOUND"}


class EspeakError(RuntimeError):
    pass


class _EspeakEvent(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),  # union {int number; const char *name; char string[8]}
    ]


class _EspeakVoice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_EspeakEvent)
)


def find_espeak() -> tuple[str, str]:
    """Return (library path, data path) of the espeak-ng shipped by espeakng-loader.

    ``ESPEAKNG_LIBRARY`` / ``ESPEAKNG_DATA`` environment variables override them.
    """
    lib = os.environ.get("ESPEAKNG_LIBRARY")
    data = os.environ.get("ESPEAKNG_DATA")
    if lib is None or data is None:
        try:
            import espeakng_loader
        except ImportError as e:
            raise EspeakError(
                "The 'espeakng-loader' package is required for the mini_synth demo corpus "
                "(it ships the espeak-ng library and voice data): pip install espeakng-loader"
            ) from e
        lib = lib or espeakng_loader.get_library_path()
        data = data or espeakng_loader.get_data_path()
    if not Path(lib).is_file():
        raise EspeakError(f"espeak-ng shared library not found: {lib}")
    if not (Path(data) / "phontab").is_file():
        raise EspeakError(f"espeak-ng data directory not found or incomplete (no phontab): {data}")
    return lib, data


def list_variants(data_path: Optional[str] = None) -> List[str]:
    """Voice variants (``!v/<name>``) present in the espeak-ng data."""
    data_path = data_path or find_espeak()[1]
    return sorted(p.name for p in (Path(data_path) / "voices" / "!v").iterdir() if p.is_file())


def resample(wav: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """int16 -> int16 resampling with torchaudio (band-limited sinc interpolation)."""
    if orig_rate == new_rate:
        return wav.astype(np.int16)
    import torch
    import torchaudio.functional as AF

    x = torch.from_numpy(wav.astype(np.float32) / 32768.0)
    y = AF.resample(x, orig_rate, new_rate)
    return (y.clamp(-1.0, 32767 / 32768) * 32768.0).round().to(torch.int16).numpy()


class EspeakSynth:
    """``out_rate=None`` returns audio at the library's native rate (``native_rate``)."""

    _instance_alive = False

    def __init__(self, out_rate: Optional[int] = 16000):
        if EspeakSynth._instance_alive:
            raise EspeakError("only one EspeakSynth per process (espeak-ng has global state)")
        self.lib_path, self.data_path = find_espeak()
        try:
            lib = ctypes.CDLL(self.lib_path)
        except OSError as e:
            raise EspeakError(f"cannot load espeak-ng library {self.lib_path}: {e}") from e
        self._lib = lib
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_Terminate.restype = ctypes.c_int
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_EspeakVoice))

        rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 500, self.data_path.encode(),
                                     espeakINITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise EspeakError(f"espeak_Initialize failed (returned {rate}); data path {self.data_path}")
        self.native_rate = rate
        self.out_rate = out_rate
        self._chunks: List[np.ndarray] = []

        def _cb(wav, numsamples, events):
            if wav and numsamples > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
            return 0

        self._cb = _SYNTH_CALLBACK(_cb)  # keep a reference: it must outlive the library calls
        lib.espeak_SetSynthCallback(self._cb)
        self._voice = None
        EspeakSynth._instance_alive = True

    def list_voices(self) -> List[tuple[str, str]]:
        """(identifier, languages) of the base voices known to the library."""
        arr = self._lib.espeak_ListVoices(None)
        out, i = [], 0
        while arr[i]:
            v = arr[i].contents
            langs = v.languages[1:].split(b"\0")[0].decode() if v.languages else ""
            out.append((v.identifier.decode(), langs))
            i += 1
        return out

    def set_voice(self, voice: str):
        """``voice`` is ``<language voice>[+<variant>]``, e.g. ``en-us+f2``."""
        if voice == self._voice:
            return
        base, _, variant = voice.partition("+")
        if variant and not (Path(self.data_path) / "voices" / "!v" / variant).is_file():
            raise EspeakError(f"espeak-ng voice variant '{variant}' not found in "
                              f"{self.data_path}/voices/!v (available: {', '.join(list_variants(self.data_path))})")
        err = self._lib.espeak_SetVoiceByName(voice.encode())
        if err != EE_OK:
            raise EspeakError(f"espeak-ng voice '{voice}' not found ({_ERRORS.get(err, err)}); "
                              f"base voices: {', '.join(i for i, _ in self.list_voices() if i.startswith('gmw/en'))}")
        self._voice = voice

    def synth(self, text: str, voice: str, rate: int = 175, pitch: int = 50, pitch_range: int = 50,
              word_gap: int = 0, isolated: bool = True) -> np.ndarray:
        """Synthesize ``text``; returns int16 samples at ``self.out_rate``.

        espeak-ng keeps internal state between utterances (pitch flutter phase,
        filter memories, ...), so the audio of an utterance depends on what was
        synthesized before it in the same process.  With ``isolated=True`` (the
        default) each utterance is synthesized in a forked child of the freshly
        initialized library, which makes the output a pure function of
        (text, voice, parameters): identical whatever the order, sharding or
        number of jobs.
        """
        if isolated and hasattr(os, "fork"):
            wav = self._synth_forked(text, voice, rate, pitch, pitch_range, word_gap)
        else:
            wav = self._synth_native(text, voice, rate, pitch, pitch_range, word_gap)
        return self._resample(wav)

    def _synth_forked(self, *args) -> np.ndarray:
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: synthesize, send (status, payload) through the pipe, exit
            os.close(rfd)
            try:
                payload = b"0" + self._synth_native(*args).astype("<i2").tobytes()
            except BaseException as e:  # noqa: BLE001 - report everything to the parent
                payload = b"1" + str(e).encode("utf-8", "replace")
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(wfd, view):]
            finally:
                os._exit(0)
        os.close(wfd)
        chunks = []
        with os.fdopen(rfd, "rb") as f:
            while True:
                b = f.read(1 << 16)
                if not b:
                    break
                chunks.append(b)
        _, status = os.waitpid(pid, 0)
        data = b"".join(chunks)
        if not data or status != 0:
            raise EspeakError(f"espeak-ng synthesis child process failed (status {status}) for {args[:2]}")
        if data[:1] == b"1":
            raise EspeakError(data[1:].decode("utf-8", "replace"))
        return np.frombuffer(data[1:], dtype="<i2").astype(np.int16)

    def _synth_native(self, text: str, voice: str, rate: int = 175, pitch: int = 50,
                      pitch_range: int = 50, word_gap: int = 0) -> np.ndarray:
        self.set_voice(voice)
        for p, v in ((espeakRATE, rate), (espeakPITCH, pitch), (espeakRANGE, pitch_range),
                     (espeakWORDGAP, word_gap), (espeakVOLUME, 100)):
            err = self._lib.espeak_SetParameter(p, int(v), 0)
            if err != EE_OK:
                raise EspeakError(f"espeak_SetParameter({p}, {v}) failed: {_ERRORS.get(err, err)}")
        self._chunks = []
        buf = ctypes.create_string_buffer(text.encode("utf-8"))
        err = self._lib.espeak_Synth(buf, len(buf), 0, POS_CHARACTER, 0, espeakCHARS_UTF8, None, None)
        if err != EE_OK:
            raise EspeakError(f"espeak_Synth failed ({_ERRORS.get(err, err)}) for text {text!r}")
        self._lib.espeak_Synchronize()
        wav = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
        self._chunks = []
        if wav.size == 0:
            raise EspeakError(f"espeak-ng produced no audio for {text!r} with voice {voice}")
        return wav

    def _resample(self, wav: np.ndarray) -> np.ndarray:
        if self.out_rate is None:
            return wav
        return resample(wav, self.native_rate, self.out_rate)

    def close(self):
        if EspeakSynth._instance_alive:
            self._lib.espeak_Terminate()
            EspeakSynth._instance_alive = False


_SHARED: Optional[EspeakSynth] = None


def get_synth() -> EspeakSynth:
    """The process-wide synthesizer (native rate output), created on first use."""
    global _SHARED
    if _SHARED is None:
        _SHARED = EspeakSynth(out_rate=None)
    return _SHARED


if __name__ == "__main__":  # quick manual check: python espeak_synth.py "hello world" en-us+m3 out.wav
    import sys

    import soundfile as sf

    s = EspeakSynth()
    print("native rate", s.native_rate)
    w = s.synth(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "en")
    if len(sys.argv) > 3:
        sf.write(sys.argv[3], w, s.out_rate, subtype="PCM_16")
    print(len(w) / s.out_rate, "s, rms", float(np.sqrt(np.mean(w.astype(np.float64) ** 2))))
