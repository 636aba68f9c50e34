//! `meld-etl synth --episode`: one long MELD-like video with its subtitles, for `erc-train predict --video`.
//!
//! The utterances are the planned `test` split's (the same cues, speakers, texts and durations as its clips),
//! played one after another in a single video with gaps of 0.2–1.5 s between them (a neutral picture and low
//! noise), key frames every 2 s as a broadcast episode has them. Written: `episode.mp4`, `episode.srt` (`Speaker:
//! text` lines) and `episode-truth.csv` (each line's emotion and cues, for tests). The subtitles carry the two
//! kinds of damage real ones do: one line overlaps the line before it, and one (the last) lies past the video's
//! end.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::clip::{self, ClipContent, Picture, Streams, FRAME_RATE, SAMPLE_RATE};
use super::{noise, PlannedClip, SynthClip};
use crate::subtitles::format_timestamp;

/// One utterance in the episode.
struct Placed {
    start: f64,
    clip: SynthClip,
    seconds: f64,
}

/// The episode's picture and sound: each utterance's clip at its place, a neutral gap between them.
struct Episode {
    placed: Vec<Placed>,
    seconds: f64,
    noise_seed: u64,
}

impl Episode {
    fn at(&self, t: f64) -> Option<&Placed> {
        let i = self.placed.partition_point(|p| p.start <= t);
        i.checked_sub(1)
            .map(|i| &self.placed[i])
            .filter(|p| t < p.start + p.seconds)
    }
}

impl ClipContent for Episode {
    fn duration(&self) -> f64 {
        self.seconds
    }

    fn draw(&self, index: u64, picture: &mut Picture) {
        let fps = FRAME_RATE.0 as f64 / FRAME_RATE.1 as f64;
        let t = index as f64 / fps;
        match self.at(t) {
            Some(p) => p.clip.draw(((t - p.start) * fps).round() as u64, picture),
            None => picture.fill_rect(
                0,
                0,
                clip::WIDTH as i64,
                clip::HEIGHT as i64,
                [60, 128, 128],
            ),
        }
    }

    fn play(&self, start: u64, out: &mut [&mut [f32]]) {
        let len = out.first().map_or(0, |c| c.len());
        let mut i = 0;
        while i < len {
            let n = start + i as u64;
            let t = n as f64 / SAMPLE_RATE as f64;
            // a run of samples inside one utterance (or one gap)
            let (placed, run_end) = match self.at(t) {
                Some(p) => {
                    let end = ((p.start + p.seconds) * SAMPLE_RATE as f64).ceil() as u64;
                    (Some(p), end)
                }
                None => {
                    let next = self.placed.iter().map(|p| p.start).find(|s| *s > t);
                    let end = next.map_or(u64::MAX, |s| (s * SAMPLE_RATE as f64).ceil() as u64);
                    (None, end)
                }
            };
            let run = ((run_end.saturating_sub(n)) as usize).clamp(1, len - i);
            let mut slices: Vec<&mut [f32]> = out.iter_mut().map(|c| &mut c[i..i + run]).collect();
            match placed {
                Some(p) => {
                    let local = n - (p.start * SAMPLE_RATE as f64).round() as u64;
                    p.clip.play(local, &mut slices);
                }
                None => {
                    for (c, channel) in slices.iter_mut().enumerate() {
                        for (k, s) in channel.iter_mut().enumerate() {
                            *s = 0.02 * noise(self.noise_seed, c, n + k as u64);
                        }
                    }
                }
            }
            i += run;
        }
    }
}

/// What `--episode` wrote.
pub struct EpisodeFiles {
    pub video: PathBuf,
    pub subtitles: PathBuf,
    pub truth: PathBuf,
    pub utterances: usize,
    pub seconds: f64,
}

/// Writes the episode of `clips` (the planned test split, in order) under `out`.
pub(crate) fn write(
    out: &Path,
    clips: &[&PlannedClip],
    texts: &[(String, String)],
    seed: u64,
) -> Result<EpisodeFiles> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xE915_0DE0);
    let mut t = 0.5;
    let mut placed = Vec::with_capacity(clips.len());
    for clip in clips {
        placed.push(Placed {
            start: t,
            clip: SynthClip::new(clip, None),
            seconds: clip.seconds,
        });
        t += clip.seconds + rng.gen_range(0.2..1.5);
    }
    let seconds = t;
    let episode = Episode {
        placed,
        seconds,
        noise_seed: rng.gen(),
    };
    let video = out.join("episode.mp4");
    let tmp = out.join("episode.mp4.partial");
    // key frames every 2 s (48 frames at 23.976 fps)
    clip::encode_video(
        &tmp,
        &episode,
        Streams {
            video: true,
            audio: true,
        },
        Some(48),
    )
    .with_context(|| format!("encoding {}", tmp.display()))?;
    std::fs::rename(&tmp, &video).with_context(|| format!("writing {}", video.display()))?;

    // the subtitles: one line per utterance; the middle one starts before the line before it ends; a last line
    // lies past the video's end
    let overlap = clips.len() / 2;
    let mut srt = String::new();
    let mut truth = csv::Writer::from_writer(Vec::new());
    truth.write_record([
        "line",
        "start",
        "end",
        "emotion",
        "text_cue",
        "audio_cue",
        "visual_cue",
        "damage",
    ])?;
    let mut lines = Vec::new();
    for (i, (p, clip)) in episode.placed.iter().zip(clips).enumerate() {
        let (mut start, end) = (p.start, p.start + p.seconds);
        let mut damage = "";
        if i == overlap && i > 0 {
            let previous = &episode.placed[i - 1];
            start = previous.start + previous.seconds - 0.4;
            damage = "overlap";
        }
        lines.push((start, end, i, damage));
        truth.write_record([
            (i + 1).to_string(),
            format!("{start:.3}"),
            format!("{end:.3}"),
            clip.emotion.name().to_string(),
            clip.cues.text.name().to_string(),
            clip.cues.audio.name().to_string(),
            clip.cues.visual.name().to_string(),
            damage.to_string(),
        ])?;
    }
    for (n, (start, end, i, _)) in lines.iter().enumerate() {
        let (speaker, text) = &texts[*i];
        srt += &format!(
            "{}\n{} --> {}\n{speaker}: {text}\n\n",
            n + 1,
            format_timestamp(*start),
            format_timestamp(*end)
        );
    }
    let n = lines.len() + 1;
    srt += &format!(
        "{n}\n{} --> {}\nNarrator: (after the end)\n\n",
        format_timestamp(seconds + 5.0),
        format_timestamp(seconds + 7.0)
    );
    truth.write_record([
        n.to_string(),
        format!("{:.3}", seconds + 5.0),
        format!("{:.3}", seconds + 7.0),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        "past_end".to_string(),
    ])?;
    let subtitles = out.join("episode.srt");
    std::fs::write(&subtitles, srt).with_context(|| format!("writing {}", subtitles.display()))?;
    let truth_path = out.join("episode-truth.csv");
    let bytes = truth.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::write(&truth_path, bytes)
        .with_context(|| format!("writing {}", truth_path.display()))?;
    Ok(EpisodeFiles {
        video,
        subtitles,
        truth: truth_path,
        utterances: clips.len() + 1,
        seconds,
    })
}
