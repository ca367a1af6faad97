"""Stacked bidirectional LSTM trunk."""
from __future__ import annotations

import torch
from torch import nn


class BLSTMTrunk(nn.Module):
    """``(B, T, input_size)`` → ``(B, T, 2·hidden)``.

    One ``nn.LSTM`` per layer so that dropout follows every layer (as in the deep
    clustering recipes) and residual connections can join layers whose widths agree
    (from the second layer on). Forget-gate biases start at 1 (``b_ih`` = 1, ``b_hh`` = 0),
    which keeps gradients alive through long utterances early in training.
    """

    def __init__(self, input_size: int, hidden: int, layers: int, dropout: float = 0.0, residual: bool = False):
        super().__init__()
        self.residual = residual
        self.lstms = nn.ModuleList(
            nn.LSTM(input_size if i == 0 else 2 * hidden, hidden, batch_first=True, bidirectional=True)
            for i in range(layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.output_size = 2 * hidden
        self.reset_forget_bias()

    @torch.no_grad()
    def reset_forget_bias(self, value: float = 1.0):
        for lstm in self.lstms:
            h = lstm.hidden_size
            for name, p in lstm.named_parameters():
                if name.startswith("bias_ih"):
                    p[h:2 * h].fill_(value)  # gate order: input, forget, cell, output
                elif name.startswith("bias_hh"):
                    p[h:2 * h].zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, lstm in enumerate(self.lstms):
            y, _ = lstm(x)
            y = self.dropout(y)
            x = y + x if self.residual and i > 0 else y
        return x
