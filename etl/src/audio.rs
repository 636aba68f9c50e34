//! Stage 3b: turns a clip's decoded audio frames into the dataset's WAV, as they arrive (no whole-clip buffer):
//! down-mix to `--channels` (ITU-R BS.775 gains, LFE dropped, each output normalised so it cannot clip — what
//! FFmpeg's own down-mix does), resample with rubato's FFT resampler to `--sample-rate`, and write 16-bit PCM with
//! hound to a temporary file that [`AudioWriter::finish`] renames into place.
//!
//! Memory is bounded by one resampler chunk per channel, so a multi-minute clip costs no more than a short one.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use ffmpeg::format::Sample;
use ffmpeg::frame;
use ffmpeg_next as ffmpeg;
use rubato::{FftFixedInOut, Resampler};

/// Frames per resampler chunk at the input rate (the FFT resampler rounds it to a multiple of the rate ratio).
const CHUNK: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("{path}: {message}")]
    Wav { path: PathBuf, message: String },
    #[error("unsupported audio: {0}")]
    Unsupported(String),
    #[error("resampler: {0}")]
    Resample(String),
}

/// The WAV format of the dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WavFormat {
    pub sample_rate: u32,
    pub channels: u16,
}

/// What a finished WAV holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AudioSummary {
    /// Frames (samples per channel) written.
    pub frames: u64,
    /// Frames decoded from the clip, at the clip's rate.
    pub input_frames: u64,
    pub input_rate: u32,
    pub seconds: f64,
}

/// Down-mix gains `gains[out][in]` from a clip's channel layout (FFmpeg's channel bit mask; 0 when unknown) to
/// one or two output channels.
pub fn downmix_gains(layout_mask: u64, in_channels: usize, out_channels: u16) -> Vec<Vec<f32>> {
    const FL: u64 = 0x1;
    const FR: u64 = 0x2;
    const FC: u64 = 0x4;
    const LFE: u64 = 0x8;
    const BL: u64 = 0x10;
    const BR: u64 = 0x20;
    const FLC: u64 = 0x40;
    const FRC: u64 = 0x80;
    const BC: u64 = 0x100;
    const SL: u64 = 0x200;
    const SR: u64 = 0x400;
    let sqrt_half = std::f32::consts::FRAC_1_SQRT_2;
    let mask = if (layout_mask.count_ones() as usize) == in_channels {
        layout_mask
    } else {
        match in_channels {
            1 => FC,
            2 => FL | FR,
            6 => FL | FR | FC | LFE | BL | BR,
            8 => FL | FR | FC | LFE | BL | BR | SL | SR,
            _ => 0,
        }
    };
    // Stereo gains (left, right) of each input channel, in the layout's channel order (increasing bit).
    let stereo: Vec<(f32, f32)> = if mask == 0 {
        vec![(0.5, 0.5); in_channels]
    } else {
        (0..64)
            .map(|b| 1u64 << b)
            .filter(|bit| mask & bit != 0)
            .map(|bit| match bit {
                FL | FLC => (1.0, 0.0),
                FR | FRC => (0.0, 1.0),
                FC if in_channels == 1 => (1.0, 1.0),
                FC => (sqrt_half, sqrt_half),
                LFE => (0.0, 0.0),
                BL | SL => (sqrt_half, 0.0),
                BR | SR => (0.0, sqrt_half),
                BC => (0.5, 0.5),
                _ => (0.5, 0.5),
            })
            .collect()
    };
    let rows: Vec<Vec<f32>> = if out_channels == 1 {
        vec![stereo.iter().map(|(l, r)| 0.5 * (l + r)).collect()]
    } else {
        vec![
            stereo.iter().map(|(l, _)| *l).collect(),
            stereo.iter().map(|(_, r)| *r).collect(),
        ]
    };
    rows.into_iter()
        .map(|row| {
            let sum: f32 = row.iter().map(|g| g.abs()).sum();
            let scale = if sum > 1.0 { 1.0 / sum } else { 1.0 };
            row.into_iter().map(|g| g * scale).collect()
        })
        .collect()
}

/// Streams decoded frames into a WAV.
pub struct AudioWriter {
    path: PathBuf,
    tmp: PathBuf,
    wav: hound::WavWriter<BufWriter<File>>,
    format: WavFormat,
    input_rate: u32,
    in_channels: usize,
    gains: Vec<Vec<f32>>,
    resampler: Option<FftFixedInOut<f32>>,
    /// Down-mixed samples waiting for a full resampler chunk, per output channel.
    pending: Vec<Vec<f32>>,
    output: Vec<Vec<f32>>,
    /// Output frames still to drop: the resampler's delay.
    to_skip: usize,
    input_frames: u64,
    /// Frames the stream declares: decoded samples past it are the encoder's padding (AAC pads to 1024).
    input_limit: Option<u64>,
    /// Decoded frames still to drop before the first kept one (a range that starts inside the stream).
    input_skip: u64,
    written: u64,
}

impl AudioWriter {
    /// Starts `path` (written to `path.tmp` until [`AudioWriter::finish`]).
    pub fn create(
        path: &Path,
        format: WavFormat,
        input_rate: u32,
        layout_mask: u64,
        in_channels: usize,
    ) -> Result<Self, AudioError> {
        if input_rate == 0 || in_channels == 0 {
            return Err(AudioError::Unsupported(format!(
                "{in_channels} channel(s) at {input_rate} Hz"
            )));
        }
        let tmp = tmp_path(path);
        let spec = hound::WavSpec {
            channels: format.channels,
            sample_rate: format.sample_rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let wav = hound::WavWriter::create(&tmp, spec).map_err(|e| AudioError::Wav {
            path: tmp.clone(),
            message: e.to_string(),
        })?;
        let out = format.channels as usize;
        let resampler = if input_rate == format.sample_rate {
            None
        } else {
            Some(
                FftFixedInOut::<f32>::new(
                    input_rate as usize,
                    format.sample_rate as usize,
                    CHUNK,
                    out,
                )
                .map_err(|e| AudioError::Resample(e.to_string()))?,
            )
        };
        let to_skip = resampler.as_ref().map_or(0, |r| r.output_delay());
        let output = resampler
            .as_ref()
            .map_or_else(Vec::new, |r| r.output_buffer_allocate(true));
        Ok(AudioWriter {
            path: path.to_path_buf(),
            tmp,
            wav,
            format,
            input_rate,
            in_channels,
            gains: downmix_gains(layout_mask, in_channels, format.channels),
            resampler,
            pending: vec![Vec::with_capacity(2 * CHUNK); out],
            output,
            to_skip,
            input_frames: 0,
            input_limit: None,
            input_skip: 0,
            written: 0,
        })
    }

    /// Drops decoded samples past `frames` (the stream's declared length, at the input rate).
    pub fn limit_input(&mut self, frames: u64) {
        self.input_limit = Some(frames);
    }

    /// Drops the next `frames` decoded samples (a range that starts after the frame the decoder begins with).
    pub fn skip_input(&mut self, frames: u64) {
        self.input_skip = frames;
    }

    /// Whether the limit of [`AudioWriter::limit_input`] is reached.
    pub fn input_full(&self) -> bool {
        self.input_limit.is_some_and(|l| self.input_frames >= l)
    }

    /// Down-mixes one decoded frame and writes what the resampler can already give.
    pub fn push(&mut self, frame: &frame::Audio) -> Result<(), AudioError> {
        let skip = self.input_skip.min(frame.samples() as u64);
        self.input_skip -= skip;
        let from = skip as usize;
        let remaining = self
            .input_limit
            .map_or(u64::MAX, |l| l.saturating_sub(self.input_frames));
        let n = (frame.samples() as u64 - skip).min(remaining) as usize;
        if n == 0 {
            return Ok(());
        }
        if frame.channels() as usize != self.in_channels {
            return Err(AudioError::Unsupported(format!(
                "channel count changed from {} to {} mid-stream",
                self.in_channels,
                frame.channels()
            )));
        }
        let start = self.pending[0].len();
        for p in self.pending.iter_mut() {
            p.resize(start + n, 0.0);
        }
        let format = frame.format();
        let planar = format.is_planar();
        if planar && self.in_channels > 8 {
            return Err(AudioError::Unsupported(format!(
                "{} planar channels",
                self.in_channels
            )));
        }
        for c in 0..self.in_channels {
            let (bytes, stride, offset) = if planar {
                (frame.data(c), 1, 0)
            } else {
                (frame.data(0), self.in_channels, c)
            };
            for (o, gains) in self.gains.iter().enumerate() {
                let g = gains[c];
                if g == 0.0 {
                    continue;
                }
                let out = &mut self.pending[o][start..start + n];
                for (i, slot) in out.iter_mut().enumerate() {
                    *slot += g * sample_at(format, bytes, (from + i) * stride + offset)?;
                }
            }
        }
        self.input_frames += n as u64;
        self.drain(false)
    }

    /// Resamples full chunks (all of `pending` when `last`) and writes them.
    fn drain(&mut self, last: bool) -> Result<(), AudioError> {
        let Some(resampler) = self.resampler.as_mut() else {
            let frames = self.pending[0].len();
            write_frames(&mut self.wav, &self.pending, 0, frames, &self.tmp)?;
            self.written += frames as u64;
            for p in self.pending.iter_mut() {
                p.clear();
            }
            return Ok(());
        };
        let wanted_total = (self.input_frames as u128 * self.format.sample_rate as u128
            + self.input_rate as u128 / 2)
            / self.input_rate as u128;
        loop {
            let need = resampler.input_frames_next();
            let have = self.pending[0].len();
            let (consumed, produced) = if have >= need {
                resampler
                    .process_into_buffer(&self.pending, &mut self.output, None)
                    .map_err(|e| AudioError::Resample(e.to_string()))?
            } else if last && (have > 0 || (self.written as u128) < wanted_total) {
                // Zero-padded tail: flushes what the resampler still holds.
                let input: Option<&[Vec<f32>]> = (have > 0).then_some(self.pending.as_slice());
                let (_, produced) = resampler
                    .process_partial_into_buffer(input, &mut self.output, None)
                    .map_err(|e| AudioError::Resample(e.to_string()))?;
                (have, produced)
            } else {
                break;
            };
            for p in self.pending.iter_mut() {
                p.drain(..consumed.min(p.len()));
            }
            let skip = self.to_skip.min(produced);
            self.to_skip -= skip;
            let mut end = produced;
            if last {
                let room = wanted_total.saturating_sub(self.written as u128) as usize;
                end = end.min(skip + room);
            }
            if end > skip {
                write_frames(&mut self.wav, &self.output, skip, end, &self.tmp)?;
                self.written += (end - skip) as u64;
            }
            if last && self.written as u128 >= wanted_total && self.pending[0].is_empty() {
                break;
            }
        }
        Ok(())
    }

    /// Flushes, finalises the header and renames the WAV into place.
    pub fn finish(mut self) -> Result<AudioSummary, AudioError> {
        self.drain(true)?;
        let tmp = self.tmp.clone();
        let wav_error = |e: String| AudioError::Wav {
            path: tmp.clone(),
            message: e,
        };
        self.wav.finalize().map_err(|e| wav_error(e.to_string()))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| AudioError::Wav {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        Ok(AudioSummary {
            frames: self.written,
            input_frames: self.input_frames,
            input_rate: self.input_rate,
            seconds: self.written as f64 / self.format.sample_rate as f64,
        })
    }

    /// Gives up: removes the temporary file.
    pub fn abandon(self) {
        let tmp = self.tmp.clone();
        drop(self.wav);
        let _ = std::fs::remove_file(tmp);
    }
}

fn write_frames(
    wav: &mut hound::WavWriter<BufWriter<File>>,
    channels: &[Vec<f32>],
    from: usize,
    to: usize,
    path: &Path,
) -> Result<(), AudioError> {
    let mut writer = wav.get_i16_writer(((to - from) * channels.len()) as u32);
    for i in from..to {
        for channel in channels {
            let v = (channel[i] * 32767.0).round().clamp(-32768.0, 32767.0) as i16;
            writer.write_sample(v);
        }
    }
    writer.flush().map_err(|e| AudioError::Wav {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Sample `index` of a plane (interleaved index for packed formats), as f32 in [-1, 1].
fn sample_at(format: Sample, bytes: &[u8], index: usize) -> Result<f32, AudioError> {
    let read = |size: usize| -> Result<&[u8], AudioError> {
        bytes
            .get(index * size..(index + 1) * size)
            .ok_or_else(|| AudioError::Unsupported("short audio frame".into()))
    };
    Ok(match format {
        Sample::F32(_) => f32::from_ne_bytes(read(4)?.try_into().unwrap_or([0; 4])),
        Sample::F64(_) => f64::from_ne_bytes(read(8)?.try_into().unwrap_or([0; 8])) as f32,
        Sample::I16(_) => {
            i16::from_ne_bytes(read(2)?.try_into().unwrap_or([0; 2])) as f32 / 32768.0
        }
        Sample::I32(_) => {
            i32::from_ne_bytes(read(4)?.try_into().unwrap_or([0; 4])) as f32 / 2_147_483_648.0
        }
        Sample::U8(_) => (read(1)?[0] as f32 - 128.0) / 128.0,
        other => return Err(AudioError::Unsupported(format!("sample format {other:?}"))),
    })
}

/// `x.wav` → `x.wav.tmp`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Checks a WAV's header and size without reading its samples: returns its frame count.
pub fn check_wav(path: &Path, expected: WavFormat) -> Result<u32, String> {
    let reader = hound::WavReader::open(path).map_err(|e| e.to_string())?;
    let spec = reader.spec();
    if spec.sample_rate != expected.sample_rate
        || spec.channels != expected.channels
        || spec.bits_per_sample != 16
        || spec.sample_format != hound::SampleFormat::Int
    {
        return Err(format!(
            "{} Hz, {} channel(s), {}-bit; expected {} Hz, {} channel(s), 16-bit",
            spec.sample_rate,
            spec.channels,
            spec.bits_per_sample,
            expected.sample_rate,
            expected.channels
        ));
    }
    let frames = reader.duration();
    let data_bytes = frames as u64 * spec.channels as u64 * 2;
    let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if size < data_bytes + 44 {
        return Err(format!("truncated: {size} bytes for {frames} frames"));
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downmix_of_5_1_matches_ffmpeg_normalised_gains() {
        let g = downmix_gains(0x3f, 6, 2);
        let total = 1.0 + 2.0 * std::f32::consts::FRAC_1_SQRT_2;
        assert!((g[0][0] - 1.0 / total).abs() < 1e-6);
        assert_eq!(g[0][1], 0.0);
        assert_eq!(g[0][3], 0.0, "LFE is dropped");
        assert!((g[1][5] - std::f32::consts::FRAC_1_SQRT_2 / total).abs() < 1e-6);
        let mono = downmix_gains(0x3f, 6, 1);
        assert!((mono[0].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(downmix_gains(0x4, 1, 2), vec![vec![1.0], vec![1.0]]);
        assert_eq!(downmix_gains(0x3, 2, 1), vec![vec![0.5, 0.5]]);
    }
}
