//! Stage 3: decodes one clip in ONE demux pass, feeding both streams at once: the video decoder's frames go to a
//! [`FrameSampler`] that keeps `--frames` of them, the audio decoder's frames go straight to an
//! [`AudioWriter`](crate::audio::AudioWriter).
//!
//! Frame sampling: tile i (i < n−1) is the frame on screen at t_i = d·i/(n−1) — the last frame whose presentation
//! time is ≤ t_i, times counted from the first frame, d the video stream's duration — and the last tile is the last
//! decodable frame (the reference repeated the previous tile when t = d fell past the end). Only kept frames are
//! converted and scaled (swscale, bicubic, straight to RGB24 at `--frame-height`); the sampler holds one decoded
//! frame (the latest) and the kept tiles, so memory does not depend on the clip's length. Non-reference frames
//! (B-frames nothing predicts from) are skipped by the decoder unless they fall within a few frames of a sample
//! time or near the end, which is safe because no other frame needs them.

use std::path::Path;

use ffmpeg::codec::{self, threading};
use ffmpeg::format::{self, Pixel};
use ffmpeg::software::scaling;
use ffmpeg::{decoder, frame, media, Discard, Packet, Rational};
use ffmpeg_next as ffmpeg;

use crate::audio::{AudioSummary, AudioWriter, WavFormat};
use crate::mosaic::Tiles;

/// Frames from this many frame durations before a sample time to this many after are always decoded: the frame
/// on screen at t starts within one frame duration before t; the margins absorb timestamp jitter.
const WINDOW_BEFORE_FRAMES: f64 = 2.0;
const WINDOW_AFTER_FRAMES: f64 = 1.0;
/// The last frames of a clip are always decoded (the last tile is the last frame).
const TAIL_FRAMES: f64 = 6.0;
/// Timestamps are compared with this tolerance (seconds).
const EPS: f64 = 1e-6;
/// Consecutive unreadable packets after which the file is given up.
const MAX_BAD_PACKETS: usize = 64;

/// What to produce from a clip.
#[derive(Debug, Clone, Copy)]
pub struct DecodeOptions {
    pub frames: usize,
    pub frame_height: u32,
    pub wav: WavFormat,
    /// Decoder threads for the video stream (1 when clips are decoded in parallel).
    pub threads: usize,
}

/// A medium of a clip: not in the file, failed (with a reason code and a sentence), or produced.
#[derive(Debug, Clone)]
pub enum Medium<T> {
    Absent,
    Failed {
        reason: &'static str,
        detail: String,
    },
    Done(T),
}

/// A problem that did not stop the clip (kept media are still valid).
#[derive(Debug, Clone)]
pub struct Warning {
    pub stage: &'static str,
    pub reason: &'static str,
    pub detail: String,
}

/// What decoding one clip produced.
#[derive(Debug)]
pub struct Decoded {
    pub video: Medium<Tiles>,
    pub audio: Medium<AudioSummary>,
    /// Seconds of media decoded (the longer stream).
    pub seconds: Option<f64>,
    pub warnings: Vec<Warning>,
    /// Video frames the decoder produced (the others were skipped).
    pub frames_decoded: u64,
}

fn seconds_of(r: Rational) -> f64 {
    if r.denominator() == 0 {
        0.0
    } else {
        r.numerator() as f64 / r.denominator() as f64
    }
}

fn known(ts: i64) -> Option<i64> {
    (ts != ffmpeg::ffi::AV_NOPTS_VALUE).then_some(ts)
}

/// A time range of a longer video, in seconds from the start of its video stream (its first frame's time is 0):
/// one utterance of an episode.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Range {
    pub start: f64,
    pub end: f64,
}

impl Range {
    pub fn seconds(&self) -> f64 {
        self.end - self.start
    }
}

/// Decodes `path`, writing its audio to `wav_path` (through a temporary name). `Err` when the file cannot be
/// opened as a media file at all.
pub fn decode_clip(
    path: &Path,
    wav_path: &Path,
    options: &DecodeOptions,
) -> Result<Decoded, String> {
    decode(path, wav_path, options, None)
}

/// [`decode_clip`] for one range of a longer video, as if the range were a clip of its own: the input is sought
/// to the key frame before `range.start` and read until both streams pass `range.end` — never decoded whole. Tile
/// i is the frame on screen at `start + d·i/(n−1)` (d the range's length; the last tile the last frame before
/// `end`), the WAV holds the samples from `start` to `end`.
pub fn decode_range(
    path: &Path,
    wav_path: &Path,
    options: &DecodeOptions,
    range: Range,
) -> Result<Decoded, String> {
    if !(range.end > range.start && range.start >= 0.0) {
        return Err(format!(
            "the range {:.3}–{:.3} s is empty or inverted",
            range.start, range.end
        ));
    }
    decode(path, wav_path, options, Some(range))
}

fn decode(
    path: &Path,
    wav_path: &Path,
    options: &DecodeOptions,
    range: Option<Range>,
) -> Result<Decoded, String> {
    let mut input = format::input(&path).map_err(|e| e.to_string())?;
    let container_seconds = (input.duration() > 0).then(|| input.duration() as f64 / 1e6);
    let video_index = input
        .streams()
        .best(media::Type::Video)
        .filter(|s| {
            !s.disposition()
                .contains(format::stream::Disposition::ATTACHED_PIC)
        })
        .map(|s| s.index());
    let audio_index = input.streams().best(media::Type::Audio).map(|s| s.index());

    let mut video_failure: Option<(&'static str, String)> = None;
    let mut audio_failure: Option<(&'static str, String)> = None;
    // The timeline of a range: seconds from the video stream's first timestamp (the audio stream's own start
    // when there is no video).
    let timeline_origin = video_index
        .or(audio_index)
        .and_then(|i| input.stream(i))
        .map(|s| known(s.start_time()).map_or(0.0, |t| t as f64 * seconds_of(s.time_base())))
        .unwrap_or(0.0);
    let mut video = match video_index.and_then(|i| input.stream(i)) {
        Some(stream) => match FrameSampler::new(&stream, container_seconds, options, range) {
            Ok(s) => Some(s),
            Err(e) => {
                video_failure = Some(("video_decoder", e));
                None
            }
        },
        None => None,
    };
    let mut audio = match audio_index.and_then(|i| input.stream(i)) {
        Some(stream) => {
            match AudioTrack::new(&stream, wav_path, options.wav, range, timeline_origin) {
                Ok(a) => Some(a),
                Err(e) => {
                    audio_failure = Some(("audio_decoder", e));
                    None
                }
            }
        }
        None => None,
    };

    if let Some(range) = range {
        // To the key frame at or before the range's start (AV_TIME_BASE units on the container's timeline).
        let ts = ((timeline_origin + range.start) * 1e6).floor() as i64;
        input
            .seek(ts, ..ts) // avformat_seek_file: max_ts is inclusive
            .map_err(|e| format!("cannot seek to {:.3} s: {e}", range.start))?;
    }
    let mut warnings = Vec::new();
    let mut packet = Packet::empty();
    let mut bad_packets = 0usize;
    loop {
        // A range is done once both streams are past its end.
        if range.is_some()
            && video.as_ref().is_none_or(|v| v.past_end())
            && audio.as_ref().is_none_or(|a| a.past_end())
        {
            break;
        }
        match packet.read(&mut input) {
            Ok(()) => bad_packets = 0,
            Err(ffmpeg::Error::Eof) => break,
            Err(ffmpeg::Error::InvalidData) if bad_packets < MAX_BAD_PACKETS => {
                bad_packets += 1;
                continue;
            }
            Err(e) => {
                warnings.push(Warning {
                    stage: "read",
                    reason: "read_error",
                    detail: format!("reading stopped early: {e}"),
                });
                break;
            }
        }
        let index = packet.stream();
        if Some(index) == video_index {
            if let Some(v) = video.as_mut() {
                if let Err(e) = v.push(&packet) {
                    video_failure = Some(("video_error", e));
                    video = None;
                }
            }
        } else if Some(index) == audio_index {
            if let Some(a) = audio.as_mut() {
                if let Err(e) = a.push(&packet) {
                    audio_failure = Some(("audio_error", e));
                    if let Some(a) = audio.take() {
                        a.abandon();
                    }
                }
            }
        }
    }

    let mut frames_decoded = 0;
    let mut video_seconds = None;
    let video = match (video, video_failure, video_index) {
        (_, Some((reason, detail)), _) => Medium::Failed { reason, detail },
        (None, None, None) => Medium::Absent,
        (None, None, Some(_)) => Medium::Failed {
            reason: "video_error",
            detail: "no decoder".into(),
        },
        (Some(v), None, _) => {
            let errors = v.errors;
            let announced = v.duration;
            let frame_seconds = v.frame_seconds;
            let result = v.finish();
            frames_decoded = result.1;
            match result.0 {
                Ok(tiles) => {
                    let span = tiles.times.last().copied().unwrap_or(0.0) + frame_seconds;
                    video_seconds = Some(span);
                    if errors > 0 {
                        warnings.push(Warning {
                            stage: "video",
                            reason: "decode_errors",
                            detail: format!("{errors} video packet(s) could not be decoded"),
                        });
                    }
                    if span < announced - (0.5f64).max(0.1 * announced) {
                        Medium::Failed {
                            reason: "truncated",
                            detail: format!(
                                "video ends at {span:.2} s although the file announces {announced:.2} s"
                            ),
                        }
                    } else {
                        Medium::Done(tiles)
                    }
                }
                Err(e) => Medium::Failed {
                    reason: "video_error",
                    detail: e,
                },
            }
        }
    };
    let audio = match (audio, audio_failure, audio_index) {
        (_, Some((reason, detail)), _) => Medium::Failed { reason, detail },
        (None, None, None) => Medium::Absent,
        (None, None, Some(_)) => Medium::Failed {
            reason: "audio_error",
            detail: "no decoder".into(),
        },
        (Some(a), None, _) => {
            let errors = a.errors;
            let announced = a.duration;
            match a.finish() {
                Ok(summary) => {
                    if errors > 0 {
                        warnings.push(Warning {
                            stage: "audio",
                            reason: "decode_errors",
                            detail: format!("{errors} audio packet(s) could not be decoded"),
                        });
                    }
                    match announced {
                        Some(a) if summary.seconds < a - (0.5f64).max(0.1 * a) => {
                            let _ = std::fs::remove_file(wav_path);
                            Medium::Failed {
                                reason: "truncated",
                                detail: format!(
                                    "audio ends at {:.2} s although the file announces {a:.2} s",
                                    summary.seconds
                                ),
                            }
                        }
                        _ => Medium::Done(summary),
                    }
                }
                Err(e) => Medium::Failed {
                    reason: "audio_error",
                    detail: e,
                },
            }
        }
    };
    if !matches!(video, Medium::Done(_)) {
        video_seconds = None;
    }
    let audio_seconds = match &audio {
        Medium::Done(a) => Some(a.input_frames as f64 / a.input_rate.max(1) as f64),
        _ => None,
    };
    let seconds = match (video_seconds, audio_seconds) {
        (Some(v), Some(a)) => Some(v.max(a)),
        (v, a) => v.or(a),
    };
    Ok(Decoded {
        video,
        audio,
        seconds,
        warnings,
        frames_decoded,
    })
}

/// Converts kept frames to packed RGB24 at the output size; remembers the last conversion so a frame kept for
/// two sample times is converted once.
struct Converter {
    scaler: Option<scaling::Context>,
    height: u32,
    width: u32,
    last: Option<(u64, Vec<u8>)>,
}

impl Converter {
    fn rgb(&mut self, frame: &frame::Video, serial: u64) -> Result<Vec<u8>, String> {
        if let Some((s, data)) = &self.last {
            if *s == serial {
                return Ok(data.clone());
            }
        }
        let (w, h, pixel) = (frame.width(), frame.height(), frame.format());
        if w == 0 || h == 0 {
            return Err("a decoded frame has no pixels".into());
        }
        if self.width == 0 {
            // Keep the aspect; floor like the reference (1280x720 → 426x240).
            self.width = ((w as u64 * self.height as u64) / h as u64).max(1) as u32;
        }
        let stale = self.scaler.as_ref().is_none_or(|s| {
            s.input().width != w || s.input().height != h || s.input().format != pixel
        });
        if stale {
            self.scaler = Some(
                scaling::Context::get(
                    pixel,
                    w,
                    h,
                    Pixel::RGB24,
                    self.width,
                    self.height,
                    scaling::Flags::BICUBIC,
                )
                .map_err(|e| format!("cannot scale {pixel:?} {w}x{h}: {e}"))?,
            );
            if let Some(scaler) = self.scaler.as_mut() {
                match_colour_matrix(scaler, frame.color_space());
            }
        }
        let scaler = self.scaler.as_mut().ok_or("no scaler")?;
        let mut out = frame::Video::empty();
        scaler
            .run(frame, &mut out)
            .map_err(|e| format!("scaling failed: {e}"))?;
        let row = self.width as usize * 3;
        let stride = out.stride(0);
        let data = out.data(0);
        let mut packed = Vec::with_capacity(row * self.height as usize);
        for y in 0..self.height as usize {
            packed.extend_from_slice(&data[y * stride..y * stride + row]);
        }
        self.last = Some((serial, packed.clone()));
        Ok(packed)
    }
}

/// Converts with the YCbCr matrix the stream declares (BT.709 for most HD video), as the ffmpeg CLI's scale
/// filter does; swscale alone would assume BT.601 for every input.
fn match_colour_matrix(scaler: &mut scaling::Context, space: ffmpeg::color::Space) {
    use ffmpeg::color::Space;
    use ffmpeg::ffi;
    let matrix = match space {
        Space::BT709 => ffi::SWS_CS_ITU709,
        Space::FCC => ffi::SWS_CS_FCC,
        Space::SMPTE240M => ffi::SWS_CS_SMPTE240M,
        Space::BT2020NCL | Space::BT2020CL => ffi::SWS_CS_BT2020,
        _ => return, // BT.601 / unspecified: swscale's default already
    };
    // SAFETY: the context is valid for the scaler's lifetime; the getter fills plain integers and pointers to
    // swscale's own static tables, which the setter copies.
    unsafe {
        let context = scaler.as_mut_ptr();
        let (mut inverse, mut table) = (std::ptr::null_mut(), std::ptr::null_mut());
        let (mut src_range, mut dst_range, mut brightness, mut contrast, mut saturation) =
            (0, 0, 0, 0, 0);
        if ffi::sws_getColorspaceDetails(
            context,
            &mut inverse,
            &mut src_range,
            &mut table,
            &mut dst_range,
            &mut brightness,
            &mut contrast,
            &mut saturation,
        ) < 0
        {
            return;
        }
        ffi::sws_setColorspaceDetails(
            context,
            ffi::sws_getCoefficients(matrix),
            src_range,
            table,
            dst_range,
            brightness,
            contrast,
            saturation,
        );
    }
}

/// Decodes the video stream and keeps the frames on screen at the sample times.
struct FrameSampler {
    decoder: decoder::Video,
    tick: f64,
    /// Stream start (ticks) for placing packets before any frame is decoded.
    packet_origin: Option<i64>,
    /// Timestamp of t = 0: the first decoded frame of a clip, the start of a range.
    origin: Option<i64>,
    /// A range of a longer video: frames before its start only stand in for the start, frames after its end are
    /// not kept.
    windowed: bool,
    duration: f64,
    frame_seconds: f64,
    targets: Vec<f64>,
    next: usize,
    /// The latest decoded frame, its time and serial number.
    previous: Option<(frame::Video, f64, u64)>,
    converter: Converter,
    tiles: Vec<Vec<u8>>,
    times: Vec<f64>,
    serial: u64,
    errors: usize,
    /// A frame past a range's end was decoded.
    after_end: bool,
}

impl FrameSampler {
    fn new(
        stream: &format::stream::Stream,
        container_seconds: Option<f64>,
        options: &DecodeOptions,
        range: Option<Range>,
    ) -> Result<Self, String> {
        let mut context = codec::context::Context::from_parameters(stream.parameters())
            .map_err(|e| e.to_string())?;
        context.set_threading(threading::Config {
            kind: threading::Type::Frame,
            ..threading::Config::count(options.threads.max(1))
        });
        let mut decoder = context.decoder().video().map_err(|e| e.to_string())?;
        decoder.set_packet_time_base(stream.time_base());
        let tick = seconds_of(stream.time_base());
        let rate = [stream.avg_frame_rate(), stream.rate()]
            .into_iter()
            .map(seconds_of)
            .find(|r| *r > 0.0)
            .unwrap_or(24.0);
        let frame_seconds = 1.0 / rate;
        let stream_duration = if stream.duration() > 0 && known(stream.duration()).is_some() {
            Some(stream.duration() as f64 * tick)
        } else if stream.frames() > 0 {
            Some(stream.frames() as f64 * frame_seconds)
        } else {
            container_seconds
        };
        // A range's t = 0 is its start: the origin is fixed before any frame is seen.
        let start = known(stream.start_time()).unwrap_or(0);
        let (duration, origin) = match range {
            Some(r) => (r.seconds(), Some(start + (r.start / tick).round() as i64)),
            None => (
                stream_duration.ok_or("the video stream's duration is unknown")?,
                None,
            ),
        };
        let n = options.frames.max(2);
        let targets = (0..n - 1)
            .map(|i| duration * i as f64 / (n - 1) as f64)
            .collect();
        Ok(FrameSampler {
            decoder,
            tick,
            packet_origin: origin.or(known(stream.start_time())),
            origin,
            windowed: range.is_some(),
            duration,
            frame_seconds,
            targets,
            next: 0,
            previous: None,
            converter: Converter {
                scaler: None,
                height: options.frame_height,
                width: 0,
                last: None,
            },
            tiles: Vec::with_capacity(n),
            times: Vec::with_capacity(n),
            serial: 0,
            errors: 0,
            after_end: false,
        })
    }

    /// Does the frame of this packet need decoding even if nothing references it?
    fn needed(&mut self, packet: &Packet) -> bool {
        let Some(pts) = packet.pts() else {
            return true;
        };
        let origin = *self.packet_origin.get_or_insert(pts);
        let t = (pts - origin) as f64 * self.tick;
        let (before, after) = (
            WINDOW_BEFORE_FRAMES * self.frame_seconds,
            WINDOW_AFTER_FRAMES * self.frame_seconds,
        );
        t >= self.duration - TAIL_FRAMES * self.frame_seconds
            || self.targets[self.next.min(self.targets.len() - 1)..]
                .iter()
                .any(|target| t >= target - before && t <= target + after)
    }

    fn push(&mut self, packet: &Packet) -> Result<(), String> {
        let discard = if self.needed(packet) {
            Discard::Default
        } else {
            Discard::NonReference
        };
        self.decoder.skip_frame(discard);
        if self.decoder.send_packet(packet).is_err() {
            // One damaged packet: the decoder conceals it; count it and go on, like the ffmpeg CLI.
            self.errors += 1;
        }
        self.receive()
    }

    fn receive(&mut self) -> Result<(), String> {
        let mut frame = frame::Video::empty();
        while self.decoder.receive_frame(&mut frame).is_ok() {
            let decoded = std::mem::replace(&mut frame, frame::Video::empty());
            self.on_frame(decoded)?;
        }
        Ok(())
    }

    /// A range's sampler has every tile it can get: a frame past the range's end was decoded.
    fn past_end(&self) -> bool {
        self.windowed && self.next >= self.targets.len() && self.after_end
    }

    fn on_frame(&mut self, frame: frame::Video) -> Result<(), String> {
        self.serial += 1;
        let t = match (frame.timestamp(), self.origin) {
            (Some(ts), Some(origin)) => (ts - origin) as f64 * self.tick,
            (Some(ts), None) => {
                self.origin = Some(ts);
                0.0
            }
            (None, _) => self
                .previous
                .as_ref()
                .map_or(0.0, |(_, t, _)| t + self.frame_seconds),
        };
        while self.next < self.targets.len() && t > self.targets[self.next] + EPS {
            // The frame on screen at the sample time is the previous one; this frame if none came before.
            let (rgb, time) = match &self.previous {
                Some((p, pt, ps)) => (self.converter.rgb(p, *ps)?, *pt),
                None => (self.converter.rgb(&frame, self.serial)?, t),
            };
            self.tiles.push(rgb);
            self.times.push(time);
            self.next += 1;
        }
        if self.windowed && t > self.duration + EPS {
            // past the range: the last tile stays the frame on screen at its end
            self.after_end = true;
            return Ok(());
        }
        self.previous = Some((frame, t, self.serial));
        Ok(())
    }

    /// Drains the decoder; the remaining sample times and the last tile get the last frame. Also returns the
    /// number of frames decoded.
    fn finish(mut self) -> (Result<Tiles, String>, u64) {
        let result = self.drain();
        (result, self.serial)
    }

    fn drain(&mut self) -> Result<Tiles, String> {
        let _ = self.decoder.send_eof();
        self.receive()?;
        let Some((last, t, serial)) = self.previous.take() else {
            return Err("the video stream has no decodable frame".to_string());
        };
        while self.tiles.len() < self.targets.len() + 1 {
            self.tiles.push(self.converter.rgb(&last, serial)?);
            self.times.push(t);
        }
        Ok(Tiles {
            width: self.converter.width,
            height: self.converter.height,
            frames: std::mem::take(&mut self.tiles),
            times: std::mem::take(&mut self.times),
        })
    }
}

/// Decodes the audio stream into an [`AudioWriter`], created at the first frame (whose rate and layout are
/// what the decoder really outputs).
struct AudioTrack {
    decoder: decoder::Audio,
    writer: Option<AudioWriter>,
    wav_path: std::path::PathBuf,
    format: WavFormat,
    duration: Option<f64>,
    errors: usize,
    /// For a range: the range, the timeline's origin (seconds) and the stream's tick (seconds).
    window: Option<(Range, f64, f64)>,
}

impl AudioTrack {
    fn new(
        stream: &format::stream::Stream,
        wav_path: &Path,
        format: WavFormat,
        range: Option<Range>,
        timeline_origin: f64,
    ) -> Result<Self, String> {
        let context = codec::context::Context::from_parameters(stream.parameters())
            .map_err(|e| e.to_string())?;
        let mut decoder = context.decoder().audio().map_err(|e| e.to_string())?;
        decoder.set_packet_time_base(stream.time_base());
        let duration = match range {
            Some(r) => Some(r.seconds()),
            None => (stream.duration() > 0 && known(stream.duration()).is_some())
                .then(|| stream.duration() as f64 * seconds_of(stream.time_base())),
        };
        Ok(AudioTrack {
            decoder,
            writer: None,
            wav_path: wav_path.to_path_buf(),
            format,
            duration,
            errors: 0,
            window: range.map(|r| (r, timeline_origin, seconds_of(stream.time_base()))),
        })
    }

    /// A range's WAV has all its samples.
    fn past_end(&self) -> bool {
        self.window.is_some() && self.writer.as_ref().is_some_and(|w| w.input_full())
    }

    fn push(&mut self, packet: &Packet) -> Result<(), String> {
        if self.decoder.send_packet(packet).is_err() {
            self.errors += 1;
        }
        self.receive()
    }

    fn receive(&mut self) -> Result<(), String> {
        let mut frame = frame::Audio::empty();
        while self.decoder.receive_frame(&mut frame).is_ok() {
            if self.writer.is_none() {
                let layout = frame.channel_layout().bits();
                self.writer = Some(
                    AudioWriter::create(
                        &self.wav_path,
                        self.format,
                        frame.rate(),
                        layout,
                        frame.channels() as usize,
                    )
                    .map_err(|e| e.to_string())?,
                );
                if let (Some(writer), Some(seconds)) = (self.writer.as_mut(), self.duration) {
                    writer.limit_input((seconds * frame.rate() as f64).round() as u64);
                }
                if let (Some(writer), Some((range, origin, tick))) =
                    (self.writer.as_mut(), self.window)
                {
                    // samples before the range's start are dropped (the seek lands on the key frame before it)
                    if let Some(pts) = frame.timestamp() {
                        let t = pts as f64 * tick - origin;
                        let early = ((range.start - t) * frame.rate() as f64).round();
                        if early > 0.0 {
                            writer.skip_input(early as u64);
                        }
                    }
                }
            }
            if let Some(writer) = self.writer.as_mut() {
                writer.push(&frame).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<AudioSummary, String> {
        let _ = self.decoder.send_eof();
        if let Err(e) = self.receive() {
            self.abandon();
            return Err(e);
        }
        match self.writer.take() {
            Some(writer) => writer.finish().map_err(|e| e.to_string()),
            None => Err("the audio stream has no decodable frame".into()),
        }
    }

    fn abandon(mut self) {
        if let Some(writer) = self.writer.take() {
            writer.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::clip::{
        encode_clip, ClipContent, Picture, Streams, FRAME_RATE, HEIGHT, WIDTH,
    };

    /// Frame k is flat grey with luma 16 + 8k, so a tile tells which frame it is (x264 moves flat greys by a
    /// level or two; neighbouring frames are 8 levels apart).
    struct Numbered {
        seconds: f64,
    }

    impl ClipContent for Numbered {
        fn duration(&self) -> f64 {
            self.seconds
        }
        fn draw(&self, index: u64, picture: &mut Picture) {
            let luma = (16 + 8 * index).min(235) as u8;
            picture.fill_rect(0, 0, WIDTH as i64, HEIGHT as i64, [luma, 128, 128]);
        }
        fn play(&self, start: u64, out: &mut [&mut [f32]]) {
            for channel in out.iter_mut() {
                for (i, s) in channel.iter_mut().enumerate() {
                    *s = 0.3 * ((start + i as u64) as f32 * 0.05).sin();
                }
            }
        }
    }

    fn frame_index(tile: &[u8]) -> f64 {
        let mean = tile.iter().map(|v| *v as f64).sum::<f64>() / tile.len() as f64;
        // Full-range grey back to limited-range luma (BT.601), then to the frame number.
        mean * 219.0 / 255.0 / 8.0
    }

    #[test]
    fn tiles_are_the_frames_on_screen_at_d_i_over_n_minus_1_and_the_last_frame() {
        ffmpeg::init().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let clip = dir.path().join("clip.mp4");
        let seconds = 1.0; // 24 frames at 24000/1001 fps
        encode_clip(
            &clip,
            &Numbered { seconds },
            Streams {
                video: true,
                audio: true,
            },
        )
        .unwrap();
        let options = DecodeOptions {
            frames: 5,
            frame_height: 240,
            wav: WavFormat {
                sample_rate: 16_000,
                channels: 1,
            },
            threads: 1,
        };
        let wav = dir.path().join("clip.wav");
        let decoded = decode_clip(&clip, &wav, &options).unwrap();
        let Medium::Done(tiles) = decoded.video else {
            panic!("no video: {:?}", decoded.video)
        };
        assert_eq!(
            (tiles.width, tiles.height, tiles.frames.len()),
            (426, 240, 5)
        );
        let frame = FRAME_RATE.1 as f64 / FRAME_RATE.0 as f64;
        let d = 24.0 * frame;
        let expected: Vec<f64> = (0..4)
            .map(|i| (d * i as f64 / 4.0 / frame + 1e-6).floor())
            .chain([23.0])
            .collect();
        assert_eq!(expected, vec![0.0, 6.0, 12.0, 18.0, 23.0]);
        for (i, tile) in tiles.frames.iter().enumerate() {
            let got = frame_index(tile);
            assert!(
                (got - expected[i]).abs() < 0.35,
                "tile {i}: frame {got:.2}, expected {}",
                expected[i]
            );
        }

        let Medium::Done(audio) = decoded.audio else {
            panic!("no audio")
        };
        assert!(
            (audio.seconds - seconds).abs() < 0.01,
            "{} s of audio",
            audio.seconds
        );
        let reader = hound::WavReader::open(&wav).unwrap();
        assert_eq!(reader.spec().sample_rate, 16_000);
        assert_eq!(reader.duration() as u64, audio.frames);
        assert!(!crate::audio::tmp_path(&wav).exists());
    }

    #[test]
    fn non_reference_frames_away_from_the_sample_times_are_not_decoded() {
        ffmpeg::init().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let clip = dir.path().join("clip.mp4");
        encode_clip(
            &clip,
            &Numbered { seconds: 4.0 },
            Streams {
                video: true,
                audio: false,
            },
        )
        .unwrap();
        let options = DecodeOptions {
            frames: 5,
            frame_height: 120,
            wav: WavFormat {
                sample_rate: 16_000,
                channels: 1,
            },
            threads: 1,
        };
        let decoded = decode_clip(&clip, &dir.path().join("clip.wav"), &options).unwrap();
        assert!(matches!(decoded.video, Medium::Done(_)));
        assert!(matches!(decoded.audio, Medium::Absent));
        // 96 frames, two B-frames (non-reference) between references.
        assert!(
            decoded.frames_decoded < 75,
            "{} of 96 frames decoded",
            decoded.frames_decoded
        );
    }

    /// Frame k shows k in two flat halves (left: k mod 13, right: k div 13, 16 luma levels apart), so a tile
    /// tells which of up to 169 frames it is.
    struct TwoDigits {
        seconds: f64,
    }

    impl ClipContent for TwoDigits {
        fn duration(&self) -> f64 {
            self.seconds
        }
        fn draw(&self, index: u64, picture: &mut Picture) {
            let digit = |d: u64| (16 + 16 * d).min(235) as u8;
            let half = WIDTH as i64 / 2;
            picture.fill_rect(0, 0, half, HEIGHT as i64, [digit(index % 13), 128, 128]);
            picture.fill_rect(
                half,
                0,
                WIDTH as i64,
                HEIGHT as i64,
                [digit(index / 13), 128, 128],
            );
        }
        fn play(&self, start: u64, out: &mut [&mut [f32]]) {
            Numbered { seconds: 0.0 }.play(start, out)
        }
    }

    /// The frame a tile shows (its two halves' mean levels, away from the seam).
    fn two_digits(tile: &[u8], width: u32) -> u64 {
        let (w, h) = (width as usize, tile.len() / 3 / width as usize);
        let level = |x0: usize, x1: usize| {
            let mut sum = 0f64;
            for y in 0..h {
                for x in x0..x1 {
                    sum += tile[3 * (y * w + x)] as f64;
                }
            }
            let luma = sum / ((x1 - x0) * h) as f64 * 219.0 / 255.0 + 16.0;
            ((luma - 16.0) / 16.0).round() as u64
        };
        level(w / 8, 3 * w / 8) + 13 * level(5 * w / 8, 7 * w / 8)
    }

    fn read_wav(path: &Path) -> Vec<f32> {
        hound::WavReader::open(path)
            .unwrap()
            .samples::<i16>()
            .map(|s| s.unwrap() as f32 / 32768.0)
            .collect()
    }

    /// A range of a longer video (key frames every second, as an episode has them) is cut as if it were a clip:
    /// tile i the frame on screen at start + d·i/4, the last the frame on screen at its end, the WAV the samples
    /// of the range (those of the whole file's WAV at the same times) — and the decoder starts at the key frame
    /// before the range instead of the start of the file.
    #[test]
    fn a_range_is_cut_as_if_it_were_a_clip_of_its_own() {
        ffmpeg::init().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let video = dir.path().join("episode.mp4");
        crate::synth::clip::encode_video(
            &video,
            &TwoDigits { seconds: 6.0 },
            Streams {
                video: true,
                audio: true,
            },
            Some(24),
        )
        .unwrap();
        let options = DecodeOptions {
            frames: 5,
            frame_height: 120,
            wav: WavFormat {
                sample_rate: 16_000,
                channels: 1,
            },
            threads: 1,
        };
        let whole_wav = dir.path().join("whole.wav");
        decode_clip(&video, &whole_wav, &options).unwrap();
        let whole = read_wav(&whole_wav);
        let fps = FRAME_RATE.0 as f64 / FRAME_RATE.1 as f64;
        let range = Range {
            start: 3.3,
            end: 4.8,
        };
        let wav = dir.path().join("range.wav");
        let decoded = decode_range(&video, &wav, &options, range).unwrap();
        let Medium::Done(tiles) = decoded.video else {
            panic!("no video: {:?}", decoded.video)
        };
        let on_screen = |t: f64| (t * fps + 1e-6).floor() as u64;
        let expected: Vec<u64> = (0..5)
            .map(|i| on_screen(range.start + range.seconds() * i as f64 / 4.0))
            .collect();
        let got: Vec<u64> = tiles
            .frames
            .iter()
            .map(|t| two_digits(t, tiles.width))
            .collect();
        assert_eq!(got, expected);
        // from the key frame at 3 s (frame 72), not from frame 0
        assert!(
            decoded.frames_decoded < 72,
            "{} frames decoded",
            decoded.frames_decoded
        );
        let cut = read_wav(&wav);
        assert!(
            (cut.len() as i64 - 24_000).abs() <= 2,
            "{} samples for 1.5 s",
            cut.len()
        );
        let offset = (range.start * 16_000.0).round() as usize;
        let worst = (200..cut.len() - 200)
            .map(|j| (cut[j] - whole[offset + j]).abs())
            .fold(0f32, f32::max);
        assert!(worst < 0.01, "the range's samples differ by {worst}");
        // an empty or inverted range is refused
        for bad in [(2.0, 2.0), (2.0, 1.0)] {
            let err = decode_range(
                &video,
                &wav,
                &options,
                Range {
                    start: bad.0,
                    end: bad.1,
                },
            )
            .unwrap_err();
            assert!(err.contains("empty or inverted"), "{err}");
        }
    }
}
