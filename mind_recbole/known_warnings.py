"""Warnings of RecBole 1.2.1 and torch that tell a user of ``mind-recbole`` nothing they can act on.

The ``mind-recbole`` command hides exactly these (:func:`hide_known_warnings`); every other
warning still shows. From Python nothing is hidden: the caller keeps control of its warnings.

- RecBole's dataset code turns read-only numpy arrays into tensors (torch: "The given NumPy array
  is not writable"); the tensors are never written to.
- RecBole's trainer builds ``torch.cuda.amp.GradScaler(...)``, deprecated in torch 2.4 (a
  ``FutureWarning``; the scaler is disabled on CPUs and works on GPUs).
- torch's ONNX exporter logs that torchvision is not installed, once per torchvision operator it
  would have registered; the user tower uses none of them.
"""

import logging
import warnings

# (message regex, category, module regex) as warnings.filterwarnings takes them
KNOWN_WARNINGS = (
    ("The given NumPy array is not writable", UserWarning, r"recbole\."),
    (r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated", FutureWarning, r"recbole\."),
)
# Loggers whose warnings are only such notices (set to ERROR).
QUIET_LOGGERS = ("torch.onnx._internal.exporter._registration",)


def hide_known_warnings():
    """Install the filters of :data:`KNOWN_WARNINGS` and quieten :data:`QUIET_LOGGERS`."""
    for message, category, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
