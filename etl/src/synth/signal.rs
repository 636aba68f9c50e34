//! The learnable signal planted in every synthetic row, one cue per modality.
//!
//! For each row and each modality independently, the cue is the row's own emotion with probability
//! [`CUE_AGREEMENT`], otherwise the cue of another emotion drawn uniformly. So each modality alone predicts the
//! label at best ~85% of the time (far above chance, not trivial), and fusing modalities can do better.
//!
//! * text — two cue words of the emotion ([`cue_words`]) mixed into an otherwise neutral sentence;
//! * audio — a pure tone at [`tone_hz`] starting at phase 0 on the clip's first sample (so it is phase-locked
//!   across clips, which even a raw-waveform MLP can pick up), random level, in white noise;
//! * visual — a block of the emotion's colour ([`colour_rgb`]) on a dialogue-specific background, drifting
//!   slowly; present from the first frame, so the reference's crop (top 256 rows of the mosaic) sees it.
//!
//! `synth` writes every row's actual cues to `synth-truth.csv` so tests can check each modality exactly.

use meld_shared::Emotion;
use rand::Rng;

/// Probability that a modality's cue is the row's own emotion.
pub const CUE_AGREEMENT: f64 = 0.85;

/// The frequency of the tone planted in the audio of a clip whose audio cue is `emotion`: a geometric ladder from
/// 220 Hz with ratio 1.16 (220 … 536 Hz). Not semitones of an equal-tempered scale: a step of 3 semitones puts the
/// fifth tone an octave above the first, i.e. on its second harmonic. With ratio 1.16 every pair of tones is at least
/// 0.1 away from an integer ratio, neighbours are ≥ 35 Hz apart, and all survive resampling to 8 kHz or more.
pub fn tone_hz(emotion: Emotion) -> f64 {
    220.0 * 1.16f64.powi(emotion.index() as i32)
}

/// Words that signal each emotion; all are in GloVe's 6B vocabulary.
pub fn cue_words(emotion: Emotion) -> &'static [&'static str] {
    match emotion {
        Emotion::Anger => &["furious", "angry", "outrageous", "hate"],
        Emotion::Disgust => &["gross", "disgusting", "nasty", "yuck"],
        Emotion::Fear => &["scared", "afraid", "terrified", "nervous"],
        Emotion::Joy => &["happy", "wonderful", "great", "love"],
        Emotion::Neutral => &["okay", "alright", "fine", "sure"],
        Emotion::Sadness => &["sad", "sorry", "lonely", "miss"],
        Emotion::Surprise => &["wow", "unbelievable", "whoa", "really"],
    }
}

/// The colour of the visual cue (sRGB).
pub fn colour_rgb(emotion: Emotion) -> [u8; 3] {
    match emotion {
        Emotion::Anger => [220, 30, 30],
        Emotion::Disgust => [60, 170, 40],
        Emotion::Fear => [140, 40, 190],
        Emotion::Joy => [245, 215, 40],
        Emotion::Neutral => [128, 128, 128],
        Emotion::Sadness => [40, 70, 210],
        Emotion::Surprise => [250, 140, 20],
    }
}

/// BT.601 limited-range YUV of an sRGB colour (what H.264 at 720p carries by default).
pub fn rgb_to_yuv([r, g, b]: [u8; 3]) -> [u8; 3] {
    let (r, g, b) = (r as f64, g as f64, b as f64);
    let y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0;
    let u = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0;
    let v = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0;
    [y, u, v].map(|c| c.round().clamp(0.0, 255.0) as u8)
}

/// The cue a modality carries for a row of emotion `truth`.
pub fn draw_cue(rng: &mut impl Rng, truth: Emotion) -> Emotion {
    if rng.gen_bool(CUE_AGREEMENT) {
        truth
    } else {
        let others: Vec<Emotion> = Emotion::ALL.into_iter().filter(|e| *e != truth).collect();
        others[rng.gen_range(0..others.len())]
    }
}

/// The cues of one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cues {
    pub text: Emotion,
    pub audio: Emotion,
    pub visual: Emotion,
}

impl Cues {
    pub fn draw(rng: &mut impl Rng, truth: Emotion) -> Self {
        Cues {
            text: draw_cue(rng, truth),
            audio: draw_cue(rng, truth),
            visual: draw_cue(rng, truth),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tones_are_distinct_and_not_harmonics() {
        let tones: Vec<f64> = Emotion::ALL.iter().map(|e| tone_hz(*e)).collect();
        for (i, a) in tones.iter().enumerate() {
            for b in &tones[i + 1..] {
                assert!(b / a > 1.15, "{a} vs {b}");
                let ratio = b / a;
                assert!(
                    (ratio - ratio.round()).abs() > 0.05,
                    "{b} is a harmonic of {a}"
                );
            }
        }
        assert!((tone_hz(Emotion::Anger) - 220.0).abs() < 1e-9);
    }

    #[test]
    fn cue_words_do_not_overlap() {
        let mut all: Vec<&str> = Emotion::ALL
            .iter()
            .flat_map(|e| cue_words(*e).iter().copied())
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
