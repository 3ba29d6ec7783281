//! iPXE scripts, rendered from a boot intent: pure functions, no I/O.
//!
//! What a machine boots is decided by the region ([`BootIntent`]); this module only turns that decision
//! into the text iPXE runs. Everything that reaches a script line is either made here (URLs from the
//! rack's own address and a blob's hex digest, numbers) or checked first: a system id must be a plain
//! token ([`plain_token`]) or it is left out, and free text (a problem, a reason) is echoed only after
//! [`echo_text`] replaced every character iPXE gives a meaning to (`$ | & # " ' \ ;` and controls) — so a
//! hostile string in an intent can neither end a line nor start a second command.
//!
//! The script carries what the ramdisk's agent needs to find and trust its rack — the rack's URL and its
//! agent API's URL (`ingot.agent`, HTTPS with the rack's certificate), the SHA-256 fingerprint of the cluster CA certificate, the MAC and system id — and never a secret: anyone
//! on the boot network can fetch any MAC's script. The agent proves its boot with a per-boot token it
//! asks for separately (the agent issue).

use ingot_common::image::{
    BootIntent, BootPurpose, ImageFile, FILE_DISK, FILE_INITRD, FILE_KERNEL,
};
use ingot_common::Mac;
use std::fmt::Write;

/// Longest free text echoed on the console, in bytes.
pub const MAX_ECHO: usize = 200;
/// Longest system id put on a kernel command line (system ids are 6 characters; 64 leaves room).
pub const MAX_TOKEN: usize = 64;
/// Seconds a script waits before asking again when the region could not answer.
pub const RETRY_ERROR_S: u32 = 5;
/// Seconds a script waits before asking again when something the purpose needs is missing (an operator
/// must upload it: asking every few seconds would only flood the event log).
pub const RETRY_PROBLEM_S: u32 = 30;
/// Seconds a machine told to power off waits before asking again, when its iPXE cannot power off.
pub const RETRY_IDLE_S: u32 = 300;

/// What every script needs besides the intent: where this rack is and who the machine is.
#[derive(Debug, Clone)]
pub struct ScriptContext<'a> {
    /// The rack's HTTP base URL as the machine reaches it, e.g. `http://10.20.0.1:5248` (no trailing `/`).
    pub base: &'a str,
    /// The rack's agent API base URL on the same address, e.g. `https://10.20.0.1:5249` (no trailing
    /// `/`): where the ramdisk's agent makes its calls (`ingot.agent`).
    pub agent: &'a str,
    /// SHA-256 of the cluster CA certificate's DER, lowercase hex: lets the agent verify regions and the
    /// rack over TLS without a secret in the script.
    pub ca_fingerprint: &'a str,
    /// The machine's boot MAC; `None` for a script asked for by system id, where iPXE fills in the MAC
    /// of the interface it booted from (`${netX/mac}`, the one setting a script expands).
    pub mac: Option<Mac>,
    /// This script's own URL (scripts that retry chain to it again).
    pub script_url: &'a str,
}

/// The booting interface's MAC as iPXE expands it, for scripts asked for by system id.
const MAC_SETTING: &str = "${netX/mac}";

/// The kernel command line console settings: VGA and the first serial port (where QEMU and BMC
/// serial-over-LAN consoles look).
const CONSOLE: &str = "console=tty0 console=ttyS0,115200";

/// The script for `intent`.
pub fn render(ctx: &ScriptContext<'_>, intent: &BootIntent) -> String {
    let mut s = header(ctx, intent.purpose.as_str());
    match intent.purpose {
        BootPurpose::LocalDisk => {
            line(&mut s, "echo Ingot: booting from the local disk");
            // BIOS: the first disk; UEFI (no drive 0x80) falls through to exit, and the firmware goes on
            // to its next boot entry, the disk.
            line(&mut s, "sanboot --no-describe --drive 0x80 || exit");
            line(&mut s, "exit");
        }
        BootPurpose::PowerOff => {
            let why = if intent.problem.is_empty() {
                "nothing to boot for this machine now: powering off"
            } else {
                intent.problem.as_str()
            };
            line(&mut s, &format!("echo Ingot: {}", echo_text(why)));
            line(&mut s, "poweroff || goto idle");
            // An iPXE built without the poweroff command (Debian's snponly.efi and ipxe.efi have none;
            // they do have sleep, chain --replace --autofree, sanboot and exit) idles and asks again.
            idle(&mut s, ctx, RETRY_IDLE_S);
        }
        _ => match ramdisk_lines(ctx, intent) {
            Ok(lines) => {
                line(
                    &mut s,
                    &format!(
                        "echo Ingot: booting the ramdisk to {}",
                        intent.purpose.as_str()
                    ),
                );
                for l in lines {
                    line(&mut s, &l);
                }
                // A download that fails (rack restarted, cache still fetching) is tried again.
                idle(&mut s, ctx, RETRY_ERROR_S);
            }
            Err(problem) => {
                line(&mut s, &format!("echo Ingot: {}", echo_text(&problem)));
                idle(&mut s, ctx, RETRY_PROBLEM_S);
            }
        },
    }
    s
}

/// The script answered when no intent could be had (no region session, the region's error, a timeout):
/// it says why, waits [`RETRY_ERROR_S`] and asks again.
pub fn render_retry(ctx: &ScriptContext<'_>, reason: &str) -> String {
    let mut s = header(ctx, "retry");
    line(&mut s, &format!("echo Ingot: {}", echo_text(reason)));
    idle(&mut s, ctx, RETRY_ERROR_S);
    s
}

/// `#!ipxe` and a comment naming the MAC and purpose (for people reading a captured script).
fn header(ctx: &ScriptContext<'_>, what: &str) -> String {
    let mut s = String::with_capacity(1024);
    line(&mut s, "#!ipxe");
    let who = ctx
        .mac
        .map_or_else(|| "this machine".to_string(), |m| m.to_string());
    line(&mut s, &format!("# Ingot boot script for {who}: {what}"));
    s
}

/// Appends one line; the only way text enters a script, so a line can never carry a line break.
fn line(s: &mut String, l: &str) {
    debug_assert!(!l.contains(['\n', '\r']), "a script line with a line break");
    s.extend(l.chars().filter(|c| *c != '\n' && *c != '\r'));
    s.push('\n');
}

/// `:idle`, a pause of `secs` and a chain to the script's own URL (replacing this script, so retries do
/// not nest).
fn idle(s: &mut String, ctx: &ScriptContext<'_>, secs: u32) {
    line(s, "goto idle");
    line(s, ":idle");
    line(s, &format!("echo Ingot: asking again in {secs} s"));
    line(s, &format!("sleep {secs}"));
    line(
        s,
        &format!("chain --replace --autofree {}", url(ctx.script_url)),
    );
}

/// The `kernel`, `initrd` and `boot` lines of a ramdisk purpose, or why they cannot be written.
fn ramdisk_lines(ctx: &ScriptContext<'_>, intent: &BootIntent) -> Result<Vec<String>, String> {
    if !intent.problem.is_empty() {
        return Err(intent.problem.clone());
    }
    let (Some(kernel), Some(initrd)) = (&intent.kernel, &intent.initrd) else {
        return Err(format!(
            "the region named no ramdisk for purpose {}: upload one with `ingot images upload --kind ramdisk`",
            intent.purpose.as_str()
        ));
    };
    if intent.purpose == BootPurpose::Deploy && intent.disk.is_none() {
        return Err(
            "the region named no disk image to deploy: upload it with `ingot images upload --kind disk`"
                .to_string(),
        );
    }
    let mut cmdline = format!(
        "initrd={FILE_INITRD} ingot.purpose={} ingot.rack={} ingot.agent={} ingot.ca={} ingot.mac={}",
        intent.purpose.as_str(),
        url(ctx.base),
        url(ctx.agent),
        plain_token(ctx.ca_fingerprint).unwrap_or("none"),
        ctx.mac
            .map_or_else(|| MAC_SETTING.to_string(), |m| m.to_string())
    );
    if let Some(id) = intent.system_id.as_deref().and_then(plain_token) {
        let _ = write!(cmdline, " ingot.system_id={id}");
    }
    if let Some(disk) = &intent.disk {
        let _ = write!(
            cmdline,
            " ingot.image={} ingot.image_size={}",
            disk.blob.to_hex(),
            disk.size
        );
    }
    Ok(vec![
        format!(
            "kernel {} {cmdline} {CONSOLE} || goto idle",
            blob_url(ctx, kernel, FILE_KERNEL)
        ),
        format!(
            "initrd --name {FILE_INITRD} {} || goto idle",
            blob_url(ctx, initrd, FILE_INITRD)
        ),
        "boot || goto idle".to_string(),
    ])
}

/// `<base>/blobs/<sha256>/<name>`: the name is for people and logs; the digest alone picks the bytes.
fn blob_url(ctx: &ScriptContext<'_>, f: &ImageFile, name: &str) -> String {
    debug_assert!([FILE_KERNEL, FILE_INITRD, FILE_DISK].contains(&name));
    format!("{}/blobs/{}/{name}", url(ctx.base), f.blob.to_hex())
}

/// A URL as it may appear in a script: characters iPXE would expand or split on are percent-encoded
/// (the rack builds its URLs itself; this is the second line of defence).
fn url(u: &str) -> String {
    let mut out = String::with_capacity(u.len());
    for c in u.chars() {
        if c.is_ascii_alphanumeric() || "-._~:/?=%[]@!*+,".contains(c) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// `s` when it is a plain token (1-[`MAX_TOKEN`] of `A-Z a-z 0-9 - _ .`), fit for a kernel command
/// line; `None` otherwise (the value is then left out rather than escaped: the agent finds the machine
/// by MAC too).
pub fn plain_token(s: &str) -> Option<&str> {
    let ok = !s.is_empty()
        && s.len() <= MAX_TOKEN
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c));
    ok.then_some(s)
}

/// Free text made safe for an `echo` argument: printable ASCII only, and every character with a meaning
/// to iPXE's parser (`$` settings, `|`/`&` command chaining, `#` comments, quotes, backslashes, `;`,
/// control characters and line breaks) replaced by `?`; cut to [`MAX_ECHO`] bytes.
pub fn echo_text(s: &str) -> String {
    s.chars()
        .map(|c| {
            if (c.is_ascii_graphic() || c == ' ') && !"$|&#\"'\\;`{}<>".contains(c) {
                c
            } else {
                '?'
            }
        })
        .take(MAX_ECHO)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingot_common::image::BlobId;
    use proptest::prelude::*;

    const BASE: &str = "http://10.20.0.1:5248";
    const AGENT: &str = "https://10.20.0.1:5249";
    const SELF_URL: &str = "http://10.20.0.1:5248/boot/52:54:00:00:00:01.ipxe";

    fn ctx() -> ScriptContext<'static> {
        ScriptContext {
            base: BASE,
            agent: AGENT,
            ca_fingerprint: "ab12",
            mac: Some("52:54:00:00:00:01".parse().expect("mac")),
            script_url: SELF_URL,
        }
    }

    fn file(name: &str, b: u8, size: u64) -> ImageFile {
        ImageFile {
            name: name.into(),
            blob: BlobId([b; 32]),
            size,
        }
    }

    fn intent(purpose: BootPurpose) -> BootIntent {
        BootIntent {
            system_id: Some("abc123".into()),
            purpose,
            kernel: Some(file("kernel", 0x11, 10)),
            initrd: Some(file("initrd", 0x22, 20)),
            disk: None,
            problem: String::new(),
        }
    }

    fn kernel_line(s: &str) -> &str {
        s.lines()
            .find(|l| l.starts_with("kernel "))
            .unwrap_or_else(|| panic!("no kernel line in\n{s}"))
    }

    #[test]
    fn every_ramdisk_purpose_boots_kernel_and_initrd_with_its_purpose() {
        for p in [
            BootPurpose::Enlist,
            BootPurpose::Commission,
            BootPurpose::Test,
            BootPurpose::Erase,
            BootPurpose::Rescue,
        ] {
            let s = render(&ctx(), &intent(p));
            assert!(s.starts_with("#!ipxe\n"), "{s}");
            let k = kernel_line(&s);
            let expected = format!(
                "kernel {BASE}/blobs/{}/kernel initrd=initrd ingot.purpose={} ingot.rack={BASE} \
                 ingot.agent={AGENT} ingot.ca=ab12 ingot.mac=52:54:00:00:00:01 ingot.system_id=abc123 \
                 console=tty0 console=ttyS0,115200 || goto idle",
                "11".repeat(32),
                p.as_str()
            );
            assert_eq!(k, expected);
            assert!(
                s.contains(&format!(
                    "\ninitrd --name initrd {BASE}/blobs/{}/initrd || goto idle\n",
                    "22".repeat(32)
                )),
                "{s}"
            );
            assert!(s.contains("\nboot || goto idle\n"), "{s}");
            assert!(s.contains(&format!("chain --replace --autofree {SELF_URL}\n")));
            assert!(!s.contains("ingot.image="), "{s}");
        }
    }

    #[test]
    fn a_script_by_system_id_lets_ipxe_fill_in_the_mac() {
        let c = ScriptContext { mac: None, ..ctx() };
        let s = render(&c, &intent(BootPurpose::Commission));
        assert!(kernel_line(&s).contains(" ingot.mac=${netX/mac} "), "{s}");
        check_script(&s, "by id");
    }

    #[test]
    fn enlist_of_an_unknown_mac_has_no_system_id() {
        let mut i = intent(BootPurpose::Enlist);
        i.system_id = None;
        let s = render(&ctx(), &i);
        assert!(!s.contains("ingot.system_id"), "{s}");
        assert!(kernel_line(&s).contains("ingot.purpose=enlist"));
    }

    #[test]
    fn deploy_names_the_disk_image_and_its_size() {
        let mut i = intent(BootPurpose::Deploy);
        i.disk = Some(file("disk", 0x33, 4_294_967_296));
        let s = render(&ctx(), &i);
        let k = kernel_line(&s);
        assert!(k.contains("ingot.purpose=deploy"), "{k}");
        assert!(
            k.contains(&format!(
                " ingot.image={} ingot.image_size=4294967296 ",
                "33".repeat(32)
            )),
            "{k}"
        );
        // Without its disk image a deploy boots nothing and says what to upload.
        i.disk = None;
        let s = render(&ctx(), &i);
        assert!(!s.contains("\nkernel "), "{s}");
        assert!(s.contains("ingot images upload --kind disk"), "{s}");
        assert!(s.contains(&format!("sleep {RETRY_PROBLEM_S}\n")), "{s}");
    }

    #[test]
    fn local_disk_sanboots_and_falls_through() {
        let s = render(&ctx(), &intent(BootPurpose::LocalDisk));
        assert!(
            s.contains("\nsanboot --no-describe --drive 0x80 || exit\n"),
            "{s}"
        );
        assert!(!s.contains("kernel"), "{s}");
    }

    #[test]
    fn power_off_echoes_why_and_powers_off() {
        let mut i = intent(BootPurpose::PowerOff);
        i.problem = "machine is ready: nothing to boot".into();
        let s = render(&ctx(), &i);
        assert!(
            s.contains("\necho Ingot: machine is ready: nothing to boot\n"),
            "{s}"
        );
        assert!(s.contains("\npoweroff || goto idle\n"), "{s}");
        assert!(s.contains(&format!("sleep {RETRY_IDLE_S}\n")), "{s}");
    }

    #[test]
    fn a_problem_is_echoed_and_retried_later() {
        let mut i = intent(BootPurpose::Commission);
        i.kernel = None;
        i.initrd = None;
        i.problem = "no ramdisk image for arch amd64: upload one with `ingot images upload`".into();
        let s = render(&ctx(), &i);
        assert!(!s.contains("\nkernel "), "{s}");
        assert!(
            s.contains("echo Ingot: no ramdisk image for arch amd64: upload one with ?ingot images upload?\n"),
            "{s}"
        );
        assert!(s.contains(&format!("sleep {RETRY_PROBLEM_S}\n")), "{s}");
        // No problem text but no files either: the script still says what is missing.
        i.problem.clear();
        let s = render(&ctx(), &i);
        assert!(s.contains("named no ramdisk"), "{s}");
    }

    #[test]
    fn retry_script_sleeps_and_chains_the_same_url() {
        let s = render_retry(&ctx(), "no region session: retrying");
        assert!(
            s.contains("\necho Ingot: no region session: retrying\n"),
            "{s}"
        );
        assert!(s.contains(&format!("\nsleep {RETRY_ERROR_S}\n")), "{s}");
        assert!(
            s.ends_with(&format!("chain --replace --autofree {SELF_URL}\n")),
            "{s}"
        );
    }

    /// The commands a script may contain: anything else in a line's first word is an injection.
    const COMMANDS: &[&str] = &[
        "#!ipxe", "#", "echo", "kernel", "initrd", "boot", "goto", ":idle", "sleep", "chain",
        "sanboot", "exit", "poweroff",
    ];

    fn check_script(s: &str, hostile: &str) {
        for l in s.lines() {
            let first = l.split(' ').next().unwrap_or("");
            assert!(COMMANDS.contains(&first), "line {l:?} from {hostile:?}");
            if first == "echo" {
                assert!(
                    !l.contains(['$', '|', '&', '#', '"', '\'', '\\', ';']),
                    "echo line {l:?} from {hostile:?}"
                );
            }
            if first == "kernel" {
                // Only the fixed `|| goto idle` chains, and no settings expansion but the MAC's.
                assert_eq!(l.matches("||").count(), 1, "{l:?}");
                let l = l.replace(MAC_SETTING, "");
                assert!(!l.contains(['$', '&', '#', '"', '\'', '\\', ';']), "{l:?}");
            }
        }
    }

    proptest! {
        #[test]
        fn hostile_strings_never_break_out_of_a_line(
            system_id in ".{0,80}",
            problem in "(.|\n|\r|\\$\\{|\\|\\||&&){0,300}",
            purpose in 0usize..8,
            agent in "(.|\n|\\$\\{| \\|\\| ){0,60}",
        ) {
            let p = BootPurpose::ALL[purpose];
            let mut i = intent(p);
            i.system_id = Some(system_id.clone());
            let s = render(&ctx(), &i);
            check_script(&s, &system_id);
            // Even a hostile agent URL (the rack builds it from its own address) stays one argument.
            let c = ScriptContext { agent: &agent, ..ctx() };
            let s = render(&c, &i);
            check_script(&s, &agent);
            if p.needs_ramdisk() && p != BootPurpose::Deploy {
                let k = kernel_line(&s);
                let arg = k.split(' ').find(|a| a.starts_with("ingot.agent="));
                prop_assert!(arg.is_some(), "{k}");
                prop_assert!(k.contains(" ingot.ca=ab12 "), "{k}");
            }
            if plain_token(&system_id).is_none() && p.needs_ramdisk() {
                prop_assert!(!s.contains("ingot.system_id"));
            }
            i.problem = problem.clone();
            let s = render(&ctx(), &i);
            check_script(&s, &problem);
            let s = render_retry(&ctx(), &problem);
            check_script(&s, &problem);
            for l in s.lines().filter(|l| l.starts_with("echo")) {
                prop_assert!(l.len() <= MAX_ECHO + "echo Ingot: ".len());
            }
        }
    }
}
