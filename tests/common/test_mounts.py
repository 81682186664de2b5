"""Reading /proc/self/mountinfo: which file system a path lies on, and whether it can change."""

from __future__ import annotations

from common.mounts import is_unchanging, mount_of, parse_mountinfo, unchanging_file_system

# A root, a squashfs image, a read-only bind mount of the root's /data, a read-only NFS
# mount, a mount point with a space (escaped), a tmpfs with an empty source, and a mount over
# /mnt that hides the image mounted below it earlier.
MOUNTINFO = "\n".join(
    [
        "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw",
        "30 22 7:0 / /mnt/image ro,relatime shared:9 - squashfs /dev/loop0 ro",
        "31 22 254:0 /data /srv/index ro,relatime shared:1 - ext4 /dev/vda rw",
        "32 22 0:50 / /nfs ro,relatime - nfs4 host:/export ro,vers=4.2",
        "33 22 7:1 / /media/my\\040disk ro - iso9660 /dev/sr0 ro",
        "34 22 0:51 / /scratch rw - tmpfs  rw,size=8192k",
        "35 22 0:52 / /mnt rw - tmpfs tmpfs rw",
        "garbage line",
    ]
)


def test_each_path_is_read_on_the_mount_it_lies_on():
    mounts = parse_mountinfo(MOUNTINFO)
    assert len(mounts) == 7  # the garbage line left out, not an error

    def fs(path: str, device: str) -> tuple[str, bool]:
        m = mount_of(path, device, mounts)
        assert m is not None
        return m.fstype, "ro" in m.super_options

    assert fs("/mnt/image/index", "7:0") == ("squashfs", True)
    # The bind mount's own file system is the writable root's: other mounts may write it.
    assert fs("/srv/index/catalog.sqlite", "254:0") == ("ext4", False)
    assert fs("/nfs/index", "0:50") == ("nfs4", True)
    assert fs("/media/my disk/index", "7:1") == ("iso9660", True)  # "\040" is a space
    assert fs("/scratch/x", "0:51") == ("tmpfs", False)  # an empty source field
    # /mnt mounted over the image's parent later: a path there is the tmpfs's.
    assert fs("/mnt/other", "0:52") == ("tmpfs", False)
    assert mount_of("/mnt/imagex", "0:52", mounts).point == "/mnt"  # not a prefix match
    # A path under the hidden image's point lies on the tmpfs over it (its device says so):
    # the deepest point above it, the image's, is not where it lies.
    assert fs("/mnt/image/index", "0:52") == ("tmpfs", False)
    # The kernel's mount id, where known, decides (btrfs gives st_dev no mount has).
    assert mount_of("/mnt/image/index", "0:99", mounts, mount_id="35").point == "/mnt"
    assert mount_of("/srv/index/x", "0:99", mounts, mount_id="31").fstype == "ext4"


def test_the_mount_of_a_real_path_is_the_kernels_answer(tmp_path):
    from common.mounts import find_mount

    found = find_mount(tmp_path)
    assert found is not None and (tmp_path.resolve().as_posix() + "/").startswith(
        found.point.rstrip("/") + "/"
    )


def test_a_writable_mount_is_not_read_further(tmp_path):
    assert unchanging_file_system(tmp_path) is False
    assert unchanging_file_system(tmp_path / "missing") is False


def test_only_a_read_only_file_system_no_one_else_writes_counts_as_unchanging():
    """A read-only NFS mount (or a bind mount) had been taken for read-only media: other
    machines (other mounts) write it, and its readers served removed items."""
    by_point = {m.point: m for m in parse_mountinfo(MOUNTINFO)}
    assert is_unchanging(by_point["/mnt/image"]) and is_unchanging(by_point["/media/my disk"])
    assert not is_unchanging(by_point["/nfs"])  # ro, but a network file system
    assert not is_unchanging(by_point["/srv/index"])  # a ro bind mount of a rw ext4
    assert not is_unchanging(by_point["/scratch"]) and not is_unchanging(None)
