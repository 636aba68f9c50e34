//! One encoder per modality and model, each a self-contained file in the candle-transformers style (its
//! `Config`, its blocks bottom-up, `new`/`forward`): [`glove`], [`gpt2`] and [`roberta`] for text, [`resnet`] for the mosaics,
//! [`waveform`], [`wav2vec2`] and [`vocal_net`] for audio; [`hub`] resolves where pretrained weights come from, [`weights`] finds
//! and reads a checkpoint in any of the formats they come in, and [`check`] tells whether a checkpoint fits its
//! model without loading it.

pub mod check;
pub mod glove;
pub mod gpt2;
pub mod hub;
pub mod mel_cnn;
pub mod resnet;
pub mod resnet_frames;
pub mod roberta;
pub mod vocal_net;
pub mod wav2vec2;
pub mod waveform;
pub mod weights;
