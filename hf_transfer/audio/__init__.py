"""Audio: the offline Whisper tiny.en encoder (converted from packaged CTranslate2 weights), decoding and resampling
with soundfile and SciPy (no FFmpeg, no torchcodec), and the FSDD table helper. The task itself is
:mod:`hf_transfer.tasks.audio_classification` (docs/tasks.md)."""
