"""Grammar-constrained greedy decoding for llama.cpp, and a grammar for Lispress plans."""

from __future__ import annotations

import ctypes

import llama_cpp.llama_cpp as llama_capi
import numpy as np
import numpy.typing as npt

# The normalized form (see app.domain.lispress.render) puts exactly one space between
# tokens: `( Yield :output ( Foo :bar # ( String " x y " ) ) )`. Allowing only that
# spacing keeps the grammar unambiguous, so llama.cpp tracks a single parse stack per
# step. A symbol is any run of characters other than whitespace, brackets and the
# string quote, as app.domain.lispress.tokenize reads it, so `#`, `^Unit` and `:output`
# are symbols. A string literal may contain backslash escapes but no newline. Once the
# outermost list closes, the grammar allows only an end-of-generation token.
LISPRESS_GBNF = r"""
root   ::= list
list   ::= "(" ( " " item )* " )"
item   ::= list | string | symbol
string ::= "\"" ( [^"\\\n] | "\\" [^\n] )* "\""
symbol ::= [^ \t\r\n()"]+
"""

# The memory layout of llama_token_data, so a numpy array can serve as a llama_token_data_array.
_TOKEN_DATA = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)


class GrammarMatcher:
    """The parse state of one output against a GBNF grammar, kept by a llama.cpp grammar sampler.

    Not thread-safe: use one matcher per thread, as LlamaCppBackend does on its worker thread.
    """

    def __init__(self, vocab: llama_capi.llama_vocab_p, n_vocab: int, gbnf: str) -> None:
        """Parse `gbnf` (start rule `root`), and raise ValueError when llama.cpp rejects it."""
        sampler = llama_capi.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
        if not sampler:
            raise ValueError("invalid GBNF grammar: llama.cpp could not parse it")
        self._sampler: llama_capi.llama_sampler_p | None = sampler
        self._candidates = np.zeros(n_vocab, dtype=_TOKEN_DATA)
        self._candidates["id"] = np.arange(n_vocab, dtype=np.intc)
        self._single = np.zeros(1, dtype=_TOKEN_DATA)

    def reset(self) -> None:
        """Start a new output at the grammar's start rule."""
        llama_capi.llama_sampler_reset(self._live_sampler())

    def choose(self, logits: npt.NDArray[np.float32]) -> int:
        """Return the token with the highest logit among those the grammar allows next.

        The unconstrained best token is checked first, because checking one token is
        far cheaper than masking the whole vocabulary and the model usually proposes
        a token the grammar allows. Raises ValueError when the grammar allows no token.
        """
        best = int(np.argmax(logits))
        self._single["id"] = best
        self._single["logit"] = logits[best]
        self._apply(self._single)
        if np.isfinite(self._single["logit"][0]):
            return best

        self._candidates["logit"] = logits
        self._apply(self._candidates)
        allowed = self._candidates["logit"]
        best = int(np.argmax(allowed))
        if not np.isfinite(allowed[best]):
            raise ValueError("the grammar allows no next token")
        return best

    def accept(self, token: int) -> None:
        """Advance the parse state past `token`, which choose() returned."""
        llama_capi.llama_sampler_accept(self._live_sampler(), token)

    def close(self) -> None:
        """Free the llama.cpp sampler, after which the matcher cannot be used."""
        if self._sampler is not None:
            llama_capi.llama_sampler_free(self._sampler)
            self._sampler = None

    def _apply(self, candidates: npt.NDArray[np.void]) -> None:
        # llama.cpp sets the logit of every token the grammar rejects to -inf, in place.
        token_array = llama_capi.llama_token_data_array(
            data=candidates.ctypes.data_as(llama_capi.llama_token_data_p),
            size=len(candidates),
            selected=-1,
            sorted=False,
        )
        llama_capi.llama_sampler_apply(self._live_sampler(), ctypes.byref(token_array))

    def _live_sampler(self) -> llama_capi.llama_sampler_p:
        if self._sampler is None:
            raise ValueError("the grammar matcher has been closed")
        return self._sampler
