"""The popular LSTM recipe that never sets the forget bias: IA501 forget-bias-unset (info).

The loop tests `'forget' in name`, but PyTorch names its LSTM biases `bias_ih_l0`,
`bias_hh_l0`, ...: the forget gate is the slice [H:2H] of each, and no name contains
"forget". The branch never runs and the forget bias stays near 0.

    initaudit examples/lstm_forget.py:build
"""

import torch
from torch import nn


class Tagger(nn.Module):
    def __init__(self, vocab: int = 1000, embed: int = 64, hidden: int = 128, tags: int = 12):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, tags)
        for name, param in self.lstm.named_parameters():
            if "weight" in name:
                nn.init.orthogonal_(param)
            elif "forget" in name:  # never true: the recipe's bug
                nn.init.ones_(param)
            else:
                nn.init.zeros_(param)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(ids))
        return self.head(out)


def build(**kwargs) -> nn.Module:
    return Tagger(**kwargs)
