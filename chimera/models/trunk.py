"""Stacked bidirectional LSTM trunk."""
from __future__ import annotations

import torch
from torch import nn


# torch.export cannot keep the time axis of nn.LSTM dynamic (torch's LSTM decomposition loops
# over the frames and pins their number: pytorch/pytorch#115092). Exported with a dynamic
# number of frames, each layer is this op instead, whose fake kernel gives the shape without
# the loop; it runs the same aten.lstm kernel. Inference only: it has no backward.
@torch.library.custom_op("chimera::blstm_layer", mutates_args=())
def _blstm_layer(x: torch.Tensor, weights: list[torch.Tensor], hidden: int) -> torch.Tensor:
    h0 = x.new_zeros(2, x.shape[0], hidden)
    return torch.lstm(x, (h0, h0), weights, True, 1, 0.0, False, True, True)[0]


@_blstm_layer.register_fake
def _(x, weights, hidden):
    return x.new_empty(x.shape[0], x.shape[1], 2 * hidden)


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
        dynamic_frames = torch.compiler.is_exporting() and isinstance(x.shape[1], torch.SymInt)
        for i, lstm in enumerate(self.lstms):
            if dynamic_frames:
                y = _blstm_layer(x, [w for ws in lstm.all_weights for w in ws], lstm.hidden_size)
            else:
                y, _ = lstm(x)
            y = self.dropout(y)
            x = y + x if self.residual and i > 0 else y
        return x
