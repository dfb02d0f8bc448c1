//! Power cuts during updates, in QEMU: a short campaign that aims two cuts at each of
//! the four moments (download, slot write, boot-state change, first boot of the new
//! slot). What every cut must come back to is in `outpost_system_tests::powercut`;
//! `scripts/bench powercut [CUTS]` runs the long campaign.

use outpost_system_tests::powercut;

#[test]
fn every_power_cut_during_an_update_comes_back_on_a_good_slot() {
    let campaign = powercut::run(8);
    println!("{campaign:?}");
    assert_eq!(campaign.cuts, 8);
    // The cuts take turns at the moments, and the device got through updates (not
    // one update cut forever).
    assert!(
        campaign.outcomes.values().sum::<u32>() >= 1,
        "no update came to an end: {campaign:?}"
    );
}
