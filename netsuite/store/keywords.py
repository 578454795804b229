"""
IMAP keywords as Dovecot keeps them in a Maildir: letters C{a}-C{z} in the
file name's info (C{:2,Sa}), mapped to names by the folder's
C{dovecot-keywords} file (C{"0 $Forwarded\\n1 Junk\\n"}: a is $Forwarded, b
is Junk).  Writing the same letters lets Dovecot, mutt and netsuite share a
folder's keywords; a folder holds at most 26 such keywords, further ones
stay only in netsuite's index.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.logger import Logger

log = Logger(namespace="netsuite.store")

KEYWORDS_NAME = "dovecot-keywords"
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def parse(text: str) -> dict[int, str]:
    """C{"0 Junk\\n"} -> {0: "Junk"}; lines that are not C{N name} are skipped."""
    out: dict[int, str] = {}
    for line in text.split("\n"):
        num, sep, name = line.partition(" ")
        if sep and num.isdigit() and name and int(num) < len(LETTERS):
            out[int(num)] = name
    return out


class KeywordLetters:
    """
    One folder's C{dovecot-keywords}, read again whenever the file changed
    (Dovecot may add keywords), written atomically when netsuite adds one.
    """

    def __init__(self, folder_path: Path):
        self.path = Path(folder_path) / KEYWORDS_NAME
        self._stamp: tuple[int, int] | None = None
        self._by_num: dict[int, str] = {}
        self._by_name: dict[str, int] = {}

    def _reload(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            stamp = None
        else:
            stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp and (stamp is not None or not self._by_num):
            return
        self._stamp = stamp
        try:
            text = self.path.read_text("utf-8", errors="surrogateescape") if stamp else ""
        except FileNotFoundError:
            text = ""
        self._by_num = parse(text)
        self._by_name = {name.lower(): num for num, name in self._by_num.items()}

    def keyword(self, letter: str) -> str | None:
        """The keyword C{letter} stands for, or None (unmapped)."""
        i = LETTERS.find(letter)
        if i < 0 or len(letter) != 1:
            return None
        self._reload()
        return self._by_num.get(i)

    def letter(self, keyword: str, create: bool = False) -> str | None:
        """C{keyword}'s letter; C{create} assigns a free one (None: all 26 are taken)."""
        self._reload()
        num = self._by_name.get(keyword.lower())
        if num is None and create:
            free = [i for i in range(len(LETTERS)) if i not in self._by_num]
            if not free:
                return None
            num = free[0]
            self._by_num[num] = keyword
            self._by_name[keyword.lower()] = num
            if not self._write():
                del self._by_num[num], self._by_name[keyword.lower()]
                return None
        return None if num is None else LETTERS[num]

    def keywords_of(self, letters: str) -> tuple[str, ...]:
        """The keywords the name's letters stand for, in letter order."""
        return tuple(k for c in sorted(letters) if (k := self.keyword(c)) is not None)

    def _write(self) -> bool:
        tmp = self.path.with_name(KEYWORDS_NAME + ".netsuite-tmp")
        try:
            tmp.write_text("".join(f"{n} {k}\n" for n, k in sorted(self._by_num.items())),
                           "utf-8", errors="surrogateescape")
            os.replace(tmp, self.path)
            st = os.stat(self.path)
        except OSError as e:  # a full disk: the keyword stays in the index only
            tmp.unlink(missing_ok=True)
            log.warn("cannot write {path}: {error}", path=str(self.path), error=e)
            return False
        self._stamp = (st.st_mtime_ns, st.st_size)
        return True
