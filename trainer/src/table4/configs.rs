//! The 30 Table-4 configs, carried by the binary (the table runs wherever `erc-train` is, not only in a checkout).

/// The YAML of `configs/<file>`, for the files `configs/table4.csv` names.
pub fn yaml(file: &str) -> Option<&'static str> {
    Some(match file {
        "baseline-cce.yml" => include_str!("../../../configs/baseline-cce.yml"),
        "baseline-dice.yml" => include_str!("../../../configs/baseline-dice.yml"),
        "baseline-focal.yml" => include_str!("../../../configs/baseline-focal.yml"),
        "t-um-glove.yml" => include_str!("../../../configs/t-um-glove.yml"),
        "t-um-gpt2.yml" => include_str!("../../../configs/t-um-gpt2.yml"),
        "t-mm-gpt2.yml" => include_str!("../../../configs/t-mm-gpt2.yml"),
        "a-um-waveform.yml" => include_str!("../../../configs/a-um-waveform.yml"),
        "a-um-wav2vec2.yml" => include_str!("../../../configs/a-um-wav2vec2.yml"),
        "a-mm-wav2vec2.yml" => include_str!("../../../configs/a-mm-wav2vec2.yml"),
        "v-um-resnet50.yml" => include_str!("../../../configs/v-um-resnet50.yml"),
        "v-um-retinaface.yml" => include_str!("../../../configs/v-um-retinaface.yml"),
        "v-mm-retinaface.yml" => include_str!("../../../configs/v-mm-retinaface.yml"),
        "fusion-mha-baseline.yml" => include_str!("../../../configs/fusion-mha-baseline.yml"),
        "fusion-concat-adv.yml" => include_str!("../../../configs/fusion-concat-adv.yml"),
        "fusion-mha-adv.yml" => include_str!("../../../configs/fusion-mha-adv.yml"),
        "losses-dice_triplet.yml" => include_str!("../../../configs/losses-dice_triplet.yml"),
        "final-i01-waveform-150Kx50.yml" => {
            include_str!("../../../configs/final-i01-waveform-150Kx50.yml")
        }
        "final-i01-waveform-150Kx50_lr5e-4.yml" => {
            include_str!("../../../configs/final-i01-waveform-150Kx50_lr5e-4.yml")
        }
        "final-i02-waveform-150Kx256.yml" => {
            include_str!("../../../configs/final-i02-waveform-150Kx256.yml")
        }
        "final-i02-waveform-150Kx768.yml" => {
            include_str!("../../../configs/final-i02-waveform-150Kx768.yml")
        }
        "final-i03-waveform-200Kx256.yml" => {
            include_str!("../../../configs/final-i03-waveform-200Kx256.yml")
        }
        "final-i03-waveform-200Kx768.yml" => {
            include_str!("../../../configs/final-i03-waveform-200Kx768.yml")
        }
        "final-i04-waveform-200Kx256mha.yml" => {
            include_str!("../../../configs/final-i04-waveform-200Kx256mha.yml")
        }
        "final-i05-wav2vec2-200kx1536.yml" => {
            include_str!("../../../configs/final-i05-wav2vec2-200kx1536.yml")
        }
        "final-i05-wav2vec2-250Kx1536.yml" => {
            include_str!("../../../configs/final-i05-wav2vec2-250Kx1536.yml")
        }
        "final-i06-wd0_01-mha1024-ff512x256.yml" => {
            include_str!("../../../configs/final-i06-wd0_01-mha1024-ff512x256.yml")
        }
        "final-i07-wd0_01-mha1024-ff512x512.yml" => {
            include_str!("../../../configs/final-i07-wd0_01-mha1024-ff512x512.yml")
        }
        "final-i08-wd0_1-mha1024-ff1024x512x512da02.yml" => {
            include_str!("../../../configs/final-i08-wd0_1-mha1024-ff1024x512x512da02.yml")
        }
        "final-i09-wd0_1-mha1024-ff1024x1024x512x512da02.yml" => {
            include_str!("../../../configs/final-i09-wd0_1-mha1024-ff1024x1024x512x512da02.yml")
        }
        "final-i10-best-l2norm_off.yml" => {
            include_str!("../../../configs/final-i10-best-l2norm_off.yml")
        }
        _ => return None,
    })
}
