"""Exit codes of the ``mamlkit`` command, and one line for every expected failure.

Every command ends with one of these codes, so schedulers and ``&&`` chains can tell a finished
run from an interrupted or failed one (``docs/reliability.md`` has the full table):

====== =====================================================================================
code   meaning
====== =====================================================================================
0      done
1      internal error (a bug: the traceback is printed)
2      bad input or usage (options, config files, data files, run folders, checkpoints)
3      stopped on non-finite values (the last good checkpoint is kept)
4      the system refused: disk full, no permission, read-only folder, download failed, out of
       memory (fix it, then continue with ``--resume``)
128+N  stopped by signal N (130 for Ctrl-C / SIGINT, 143 for SIGTERM) after writing a
       checkpoint that ``--resume`` continues from
====== =====================================================================================
"""

from __future__ import annotations

import errno
import re
from pathlib import Path

EXIT_DONE = 0
EXIT_BUG = 1
EXIT_BAD_INPUT = 2
EXIT_NON_FINITE = 3
EXIT_SYSTEM = 4
EXIT_SIGNAL_BASE = 128

WRONG_MODEL_ADVICE = ("Use the settings the run was trained with (drop options such as --algo, "
                      "--hidden, --ways or --model), or point at the run it belongs to.")
"""The fix for a checkpoint that does not fit the model a configuration builds."""

_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NO_PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}


def naming(error: OSError, path: str | Path) -> OSError:
    """``error`` with ``path`` as its file name when it has none (a failed ``write`` on an open
    handle, e.g. a full disk, reports no file), so the message can say which file failed."""
    if error.filename is not None or error.errno is None:
        return error
    return OSError(error.errno, error.strerror or str(error), str(path))


def describe(error: BaseException, resume_hint: str = "") -> tuple[int, str] | None:
    """The exit code and one-line message for an expected failure; ``None`` for a bug.

    ``resume_hint`` is the command that continues the run (given once its folder exists); it is
    added where the run can be continued after the problem is fixed.
    """
    then = f" Then continue with: {resume_hint}" if resume_hint else ""
    if isinstance(error, KeyboardInterrupt):
        return EXIT_SIGNAL_BASE + 2, "interrupted (SIGINT)." + (
            f" Continue with: {resume_hint}" if resume_hint else "")
    if isinstance(error, OSError):
        return _describe_os_error(error, then)
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return EXIT_SYSTEM, (f"out of memory ({_one_line(error)[:200]}). Lower --meta-batch-size, "
                             "or bound the memory with --chunk-size." + then)
    if isinstance(error, RuntimeError) and "Error(s) in loading state_dict" in str(error):
        return EXIT_BAD_INPUT, (
            "the checkpoint does not fit the model this configuration builds ("
            + _one_line(error)[:300] + "). " + WRONG_MODEL_ADVICE)
    if isinstance(error, (ValueError, ImportError)):
        return EXIT_BAD_INPUT, _one_line(error)
    return None


def _describe_os_error(error: OSError, then: str) -> tuple[int, str]:
    where = error.filename if error.filename is not None else ""
    if error.errno is None:  # our own messages: they already name the file and the fix
        code = EXIT_BAD_INPUT if isinstance(error, (FileNotFoundError, FileExistsError,
                                                    NotADirectoryError, IsADirectoryError)) \
            else EXIT_SYSTEM
        return code, _one_line(error)
    if error.errno in _NO_SPACE:
        return EXIT_SYSTEM, (f"no space left on the device while writing {where or 'a file'}. Free "
                             "some space (checkpoints are replaced atomically, so the last one is "
                             "intact)." + then)
    if error.errno in _NO_PERMISSION:
        return EXIT_SYSTEM, (f"cannot write {where or 'a file'}: {error.strerror}. Choose a "
                             "folder you can write to (--run-dir), or fix its permissions." + then)
    if isinstance(error, IsADirectoryError):
        return EXIT_BAD_INPUT, f"{where} is a folder, but a file is expected there. Pass a file."
    if isinstance(error, NotADirectoryError):
        return EXIT_BAD_INPUT, (f"cannot create {where}: part of that path is a file, not a "
                                "folder. Choose another path, or move the file away.")
    if isinstance(error, FileExistsError):
        return EXIT_BAD_INPUT, (f"{where} already exists as a file, where a folder is needed. "
                                "Choose another path, or move the file away.")
    if isinstance(error, FileNotFoundError):
        return EXIT_BAD_INPUT, f"{where} does not exist. Check the path."
    return EXIT_SYSTEM, f"{where + ': ' if where else ''}{error.strerror or _one_line(error)}." + then


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def cli_spelling(message: str) -> str:
    """``message`` with API spellings of switches (``download=True``) replaced by the
    command-line options that set them (``--download``).

    Library errors name keyword arguments; on the command line the same advice must name flags.
    Only configuration fields set to ``True`` or ``False`` are rewritten: other ``name=value``
    pairs in messages state what was given (``device='gpu0'``) and stay as they are.
    """
    from mamlkit.config import FIELDS

    def flag(match: re.Match[str]) -> str:
        name, value = match.group(1), match.group(2)
        if name not in FIELDS:
            return match.group(0)
        dashed = name.replace("_", "-")
        return f"--{dashed}" if value == "True" else f"--no-{dashed}"

    return re.sub(r"\b([a-z][a-z0-9_]*)=(True|False)\b", flag, message)
