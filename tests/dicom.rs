//! The DICOM path on real computed radiographs (pydicom-data's RG1_UNCR, RG3_UNCR:
//! MONOCHROME1, 15 and 10 bits stored), end to end through the HTTP API.

use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_radiographs_are_ingested_through_the_dicom_decoder() {
    let dicom = dicom_dir();
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path()).await;
    let base = sim(51).next_drop();
    for (i, (file, bits)) in [("RG1_UNCR.dcm", 15), ("RG3_UNCR.dcm", 10)]
        .into_iter()
        .enumerate()
    {
        let bytes = std::fs::read(dicom.join(file)).unwrap();
        let mut sc = base.sidecar.clone();
        let id = format!("{}-DCM{i}", base.scan_id);
        sc["scan_id"] = id.clone().into();
        sc["image"]["file"] = format!("{id}.dcm").into();
        // A medical CR displays bone bright: attenuation polarity once MONOCHROME1 is applied.
        sc["image"]["pixel_meaning"] = "attenuation".into();
        let (s, b) = node
            .post_drop(&serde_json::to_vec(&sc).unwrap(), Some(bytes))
            .await;
        assert_eq!(s, 201, "{file}: {b}");
        let (_, one) = node.get_json(&format!("/api/v1/scans/{id}")).await;
        assert_eq!(one["scan"]["source_format"], "dicom");
        assert_eq!(one["scan"]["source_bits"], bits, "{file}");
        let r = node
            .client
            .get(format!("{}/api/v1/scans/{id}/image16.png", node.base))
            .send()
            .await
            .unwrap();
        let img = image::load_from_memory(&r.bytes().await.unwrap())
            .unwrap()
            .into_luma16();
        assert_eq!(img.width(), one["scan"]["width"].as_u64().unwrap() as u32);
        // A real radiograph uses a wide part of the range, not a constant.
        let (mut lo, mut hi) = (u16::MAX, 0u16);
        for &v in img.as_raw() {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        assert!(hi - lo > 20_000, "{file}: range {lo}..{hi}");
    }
    node.wait_counts((2, 2, 2), Duration::from_secs(30)).await;
}
