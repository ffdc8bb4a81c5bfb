"""The published numbers the reproduction's rows (``launch/rows.py``) are held against in the
report (kept in the repository so that it stands alone).

Penn Treebank word-level perplexities, ``(value, spread)``; the spread is the ± of the
paper's 3-run means, ``None`` where none was given:

| row                                      | valid      | test       | MC test    | src |
|------------------------------------------|------------|------------|------------|-----|
| zaremba_small (no dropout)               | 120.7      | 114.5      | –          | Z   |
| medium_naive (Zaremba medium)            | 86.2       | 82.7       | –          | Z G |
| medium_variational_tied                  | 81.8 ± 0.2 | 79.7 ± 0.1 | 79.0 ± 0.1 | G   |
| medium_variational_untied                | 81.9 ± 0.2 | 79.7 ± 0.1 | 78.6 ± 0.1 | G   |
| large_zaremba                            | 82.2       | 78.4       | –          | Z G |
| large_variational_tied                   | 77.3 ± 0.2 | 75.0 ± 0.1 | 74.1 ± 0.0 | G   |
| large_variational_untied                 | 77.9 ± 0.3 | 75.2 ± 0.2 | 73.4 ± 0.0 | G   |
| large_variational_untied_tied_embeddings | 75.8       | 73.2       | –          | P   |

Z: Zaremba et al. 2014, Table 1; G: Gal & Ghahramani 2016, Table 1; P: Press & Wolf 2016
(large LSTM, variational dropout, input and output embeddings tied).

Validation perplexities in Zaremba's and Gal's papers come from the Lua ``run_valid``, which
divides by a fractional window count (``vdrnn.metrics.lua_valid_ppl``); they are compared with
vdrnn's ``valid_ppl_lua``. Test perplexities are exact in both. MC test: 1000 samples, output
probabilities averaged. "Tied" in the variational rows is about the gates (one dropout mask
for all gates), not the embeddings.

Sentiment (Pang & Lee rating regression; Gal & Ghahramani 2016, Sec. 5.2 and its figure):
no number is published, only test-error curves over epochs (variational LSTM / GRU keep
improving where naive dropout and no dropout over-fit; 250 epochs for the variational LSTM
script, 1250 for the others). The rows carry ``None`` and the report draws the curves.
"""

from __future__ import annotations

TABLE_1 = "Gal & Ghahramani 2016, Table 1"
ZAREMBA = "Zaremba et al. 2014, Table 1"
PRESS_WOLF = "Press & Wolf 2016 (large + variational dropout + tied embeddings)"

# name -> {"source", metric: (value, spread or None)}; metrics: valid, test, mc_test.
PTB = {
    "zaremba_small": {"source": ZAREMBA, "valid": (120.7, None), "test": (114.5, None)},
    "medium_naive": {"source": f"{ZAREMBA}; {TABLE_1}", "valid": (86.2, None),
                     "test": (82.7, None)},
    "medium_variational_tied": {"source": TABLE_1, "valid": (81.8, 0.2), "test": (79.7, 0.1),
                                "mc_test": (79.0, 0.1)},
    "medium_variational_untied": {"source": TABLE_1, "valid": (81.9, 0.2),
                                  "test": (79.7, 0.1), "mc_test": (78.6, 0.1)},
    "large_zaremba": {"source": f"{ZAREMBA}; {TABLE_1}", "valid": (82.2, None),
                      "test": (78.4, None)},
    "large_variational_tied": {"source": TABLE_1, "valid": (77.3, 0.2), "test": (75.0, 0.1),
                               "mc_test": (74.1, 0.0)},
    "large_variational_untied": {"source": TABLE_1, "valid": (77.9, 0.3),
                                 "test": (75.2, 0.2), "mc_test": (73.4, 0.0)},
    "large_variational_untied_tied_embeddings": {"source": PRESS_WOLF, "valid": (75.8, None),
                                                 "test": (73.2, None)},
}

SENTIMENT_SOURCE = "Gal & Ghahramani 2016, Sec. 5.2 (figure only: no published number)"
