//! Encodes one synthetic clip the way MELD's clips are encoded: H.264 High 1280x720 at 24000/1001 fps with a
//! single keyframe (the first frame) then P/B frames, AAC-LC 5.1 at 48 kHz, in an MP4 container.
//!
//! The picture is drawn straight into YUV 4:2:0 (no RGB conversion); the sound is generated as planar float.
//! What is drawn and played comes from a [`ClipContent`], so the pixels and samples are independent of how the
//! encoder is driven.

use std::path::Path;

use ffmpeg::{codec, encoder, format, frame, ChannelLayout, Dictionary, Packet, Rational};
use ffmpeg_next as ffmpeg;

pub const WIDTH: u32 = 1280;
pub const HEIGHT: u32 = 720;
/// NTSC film rate, like the real clips (~23.976 fps).
pub const FRAME_RATE: Rational = Rational(24000, 1001);
pub const SAMPLE_RATE: u32 = 48_000;
pub const CHANNELS: usize = 6;

/// Which streams a clip file carries (the `no_audio`/`no_video` faults drop one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streams {
    pub video: bool,
    pub audio: bool,
}

/// What a clip shows and plays. Implementations must be pure functions of their inputs so that a clip's bytes
/// depend only on the seed.
pub trait ClipContent {
    /// Duration of the clip in seconds.
    fn duration(&self) -> f64;
    /// Draws frame `index` (shown at `index / FRAME_RATE` seconds).
    fn draw(&self, index: u64, picture: &mut Picture);
    /// Fills `out[c][i]` with the samples of channel `c` (FL, FR, FC, LFE, BL, BR) starting at sample `start`.
    fn play(&self, start: u64, out: &mut [&mut [f32]]);
}

/// One 4:2:0 picture with tightly packed planes: luma `width x height`, chroma `width/2 x height/2`.
pub struct Picture {
    pub y: Vec<u8>,
    pub u: Vec<u8>,
    pub v: Vec<u8>,
}

impl Picture {
    pub fn new() -> Self {
        let (w, h) = (WIDTH as usize, HEIGHT as usize);
        Picture {
            y: vec![0; w * h],
            u: vec![128; w * h / 4],
            v: vec![128; w * h / 4],
        }
    }

    /// Fills the rectangle [x0, x1) × [y0, y1) (luma coordinates, clipped to the picture) with a YUV colour.
    pub fn fill_rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, [y, u, v]: [u8; 3]) {
        let (w, h) = (WIDTH as i64, HEIGHT as i64);
        let (x0, x1, y0, y1) = (
            x0.clamp(0, w),
            x1.clamp(0, w),
            y0.clamp(0, h),
            y1.clamp(0, h),
        );
        for row in y0..y1 {
            let at = (row * w) as usize;
            self.y[at + x0 as usize..at + x1 as usize].fill(y);
        }
        let (cw, cx0, cx1) = (w / 2, x0 / 2, (x1 + 1) / 2);
        for row in y0 / 2..(y1 + 1) / 2 {
            let at = (row * cw) as usize;
            self.u[at + cx0 as usize..at + cx1 as usize].fill(u);
            self.v[at + cx0 as usize..at + cx1 as usize].fill(v);
        }
    }
}

impl Default for Picture {
    fn default() -> Self {
        Picture::new()
    }
}

/// Number of video frames of a clip of `seconds`.
pub fn frame_count(seconds: f64) -> u64 {
    (seconds * FRAME_RATE.0 as f64 / FRAME_RATE.1 as f64)
        .round()
        .max(1.0) as u64
}

/// Number of audio samples (per channel) of a clip of `seconds`.
pub fn sample_count(seconds: f64) -> u64 {
    (seconds * SAMPLE_RATE as f64).round().max(1.0) as u64
}

/// Writes `content` to `path` as an MP4 with the requested streams. x264 runs single-threaded: clips are
/// encoded in parallel, one per core, which scales better than threads inside one small encode.
pub fn encode_clip(
    path: &Path,
    content: &dyn ClipContent,
    streams: Streams,
) -> Result<(), ffmpeg::Error> {
    encode_video(path, content, streams, None)
}

/// [`encode_clip`] with a key frame every `keyframe_every` frames (an episode's GOP, so that a range can be
/// reached by seeking) instead of the one at the start of a MELD clip.
pub fn encode_video(
    path: &Path,
    content: &dyn ClipContent,
    streams: Streams,
    keyframe_every: Option<u32>,
) -> Result<(), ffmpeg::Error> {
    let mut octx = format::output_as(path, "mp4")?;
    let global_header = octx.format().flags().contains(format::Flags::GLOBAL_HEADER);

    let mut video = if streams.video {
        Some(VideoTrack::new(&mut octx, global_header, keyframe_every)?)
    } else {
        None
    };
    let mut audio = if streams.audio {
        Some(AudioTrack::new(&mut octx, global_header)?)
    } else {
        None
    };
    octx.write_header()?;

    // Interleave by presentation time so the muxer never has to buffer a whole stream.
    let frames = frame_count(content.duration());
    let samples = sample_count(content.duration());
    let mut next_frame = 0u64;
    let mut next_sample = 0u64;
    loop {
        let video_time = next_frame as f64 * FRAME_RATE.1 as f64 / FRAME_RATE.0 as f64;
        let audio_time = next_sample as f64 / SAMPLE_RATE as f64;
        let video_left = video.is_some() && next_frame < frames;
        let audio_left = audio.is_some() && next_sample < samples;
        if video_left && (!audio_left || video_time <= audio_time) {
            if let Some(track) = video.as_mut() {
                track.push(&mut octx, content, next_frame)?;
            }
            next_frame += 1;
        } else if audio_left {
            if let Some(track) = audio.as_mut() {
                next_sample += track.push(&mut octx, content, next_sample, samples)?;
            }
        } else {
            break;
        }
    }
    if let Some(track) = video.as_mut() {
        track.finish(&mut octx)?;
    }
    if let Some(track) = audio.as_mut() {
        track.finish(&mut octx)?;
    }
    octx.write_trailer()
}

struct VideoTrack {
    encoder: encoder::Video,
    stream: usize,
    picture: Picture,
}

impl VideoTrack {
    fn new(
        octx: &mut format::context::Output,
        global_header: bool,
        keyframe_every: Option<u32>,
    ) -> Result<Self, ffmpeg::Error> {
        let codec = encoder::find(codec::Id::H264).ok_or(ffmpeg::Error::EncoderNotFound)?;
        let mut stream = octx.add_stream(codec)?;
        let mut enc = codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()?;
        enc.set_width(WIDTH);
        enc.set_height(HEIGHT);
        enc.set_format(format::Pixel::YUV420P);
        enc.set_frame_rate(Some(FRAME_RATE));
        enc.set_time_base(FRAME_RATE.invert());
        // One keyframe at the start, like the real clips: no periodic or scene-cut keyframes (an episode: one
        // every `keyframe_every` frames).
        enc.set_gop(keyframe_every.unwrap_or(u32::MAX >> 1));
        enc.set_max_b_frames(2);
        if global_header {
            enc.set_flags(codec::Flags::GLOBAL_HEADER);
        }
        let mut options = Dictionary::new();
        // ultrafast's speed (synth must make ~100 clips a minute on 2 cores) with CABAC, B-frames and 8x8
        // transforms put back, so the stream is High profile with non-reference B-frames like the real clips.
        options.set("preset", "ultrafast");
        options.set("profile", "high");
        options.set("threads", "1");
        let keyint = keyframe_every.map_or("infinite".to_string(), |k| k.to_string());
        options.set(
            "x264-params",
            &format!(
                "scenecut=0:keyint={keyint}:min-keyint={keyint}:bframes=2:b-pyramid=none:cabac=1:8x8dct=1"
            ),
        );
        let encoder = enc.open_with(options)?;
        stream.set_parameters(&encoder);
        stream.set_time_base(FRAME_RATE.invert());
        stream.set_avg_frame_rate(FRAME_RATE);
        let index = stream.index();
        Ok(VideoTrack {
            encoder,
            stream: index,
            picture: Picture::new(),
        })
    }

    fn push(
        &mut self,
        octx: &mut format::context::Output,
        content: &dyn ClipContent,
        index: u64,
    ) -> Result<(), ffmpeg::Error> {
        content.draw(index, &mut self.picture);
        // A fresh frame each time: an encoder may keep a reference to a frame it was sent.
        let mut frame = frame::Video::new(format::Pixel::YUV420P, WIDTH, HEIGHT);
        let planes = [
            (&self.picture.y, WIDTH as usize),
            (&self.picture.u, WIDTH as usize / 2),
            (&self.picture.v, WIDTH as usize / 2),
        ];
        for (p, (plane, width)) in planes.into_iter().enumerate() {
            let stride = frame.stride(p);
            let data = frame.data_mut(p);
            for (row, line) in plane.chunks_exact(width).enumerate() {
                data[row * stride..row * stride + width].copy_from_slice(line);
            }
        }
        frame.set_pts(Some(index as i64));
        self.encoder.send_frame(&frame)?;
        self.drain(octx)
    }
    fn finish(&mut self, octx: &mut format::context::Output) -> Result<(), ffmpeg::Error> {
        self.encoder.send_eof()?;
        self.drain(octx)
    }

    fn drain(&mut self, octx: &mut format::context::Output) -> Result<(), ffmpeg::Error> {
        let mut packet = Packet::empty();
        while self.encoder.receive_packet(&mut packet).is_ok() {
            packet.set_stream(self.stream);
            let stream_tb = octx
                .stream(self.stream)
                .map(|s| s.time_base())
                .unwrap_or(FRAME_RATE.invert());
            packet.rescale_ts(FRAME_RATE.invert(), stream_tb);
            packet.write_interleaved(octx)?;
        }
        Ok(())
    }
}

struct AudioTrack {
    encoder: encoder::Audio,
    stream: usize,
    frame_size: usize,
}

impl AudioTrack {
    fn new(octx: &mut format::context::Output, global_header: bool) -> Result<Self, ffmpeg::Error> {
        let codec = encoder::find(codec::Id::AAC).ok_or(ffmpeg::Error::EncoderNotFound)?;
        let mut stream = octx.add_stream(codec)?;
        let mut enc = codec::context::Context::new_with_codec(codec)
            .encoder()
            .audio()?;
        enc.set_rate(SAMPLE_RATE as i32);
        enc.set_channel_layout(ChannelLayout::_5POINT1_BACK);
        enc.set_channels(CHANNELS as i32);
        enc.set_format(format::Sample::F32(format::sample::Type::Planar));
        enc.set_bit_rate(384_000);
        enc.set_time_base(Rational(1, SAMPLE_RATE as i32));
        if global_header {
            enc.set_flags(codec::Flags::GLOBAL_HEADER);
        }
        // The "fast" coder is 2.5x quicker than the default two-loop search; quality is irrelevant for a tone.
        let mut options = Dictionary::new();
        options.set("aac_coder", "fast");
        let encoder = enc.open_as_with(codec, options)?;
        stream.set_parameters(&encoder);
        stream.set_time_base(Rational(1, SAMPLE_RATE as i32));
        let frame_size = (encoder.frame_size() as usize).max(1);
        let index = stream.index();
        Ok(AudioTrack {
            encoder,
            stream: index,
            frame_size,
        })
    }

    /// Encodes one AAC frame's worth of samples starting at `start`; returns how many were pushed.
    fn push(
        &mut self,
        octx: &mut format::context::Output,
        content: &dyn ClipContent,
        start: u64,
        total: u64,
    ) -> Result<u64, ffmpeg::Error> {
        let n = (self.frame_size as u64).min(total - start) as usize;
        let mut frame = frame::Audio::new(
            format::Sample::F32(format::sample::Type::Planar),
            n,
            ChannelLayout::_5POINT1_BACK,
        );
        frame.set_rate(SAMPLE_RATE);
        let mut buffers: Vec<Vec<f32>> = vec![vec![0.0; n]; CHANNELS];
        {
            let mut views: Vec<&mut [f32]> = buffers.iter_mut().map(|b| b.as_mut_slice()).collect();
            content.play(start, &mut views);
        }
        for (c, buffer) in buffers.iter().enumerate() {
            frame.plane_mut::<f32>(c)[..n].copy_from_slice(buffer);
        }
        frame.set_pts(Some(start as i64));
        self.encoder.send_frame(&frame)?;
        self.drain(octx)?;
        Ok(n as u64)
    }

    fn finish(&mut self, octx: &mut format::context::Output) -> Result<(), ffmpeg::Error> {
        self.encoder.send_eof()?;
        self.drain(octx)
    }

    fn drain(&mut self, octx: &mut format::context::Output) -> Result<(), ffmpeg::Error> {
        let mut packet = Packet::empty();
        let tb = Rational(1, SAMPLE_RATE as i32);
        while self.encoder.receive_packet(&mut packet).is_ok() {
            packet.set_stream(self.stream);
            let stream_tb = octx
                .stream(self.stream)
                .map(|s| s.time_base())
                .unwrap_or(tb);
            packet.rescale_ts(tb, stream_tb);
            packet.write_interleaved(octx)?;
        }
        Ok(())
    }
}
