/* The album page's upload, for browsers with JavaScript (the page's form works without it).
 *
 * Takes files, a folder (input webkitdirectory) or files and folders dropped on the page,
 * groups the files by study (the StudyInstanceUID read from each file's first bytes; ZIP
 * archives and files it cannot read get a row of their own), and sends them in batches of a
 * bounded size to the album's upload route, with the session's CSRF token in a header. Each
 * batch shows its progress; a batch whose connection is cut is sent again (Orthanc stores an
 * identical instance once and answers "already present"; the server labels its study again),
 * so nothing is lost or duplicated. At the end: a summary of what was stored, what was already
 * present and what was refused, with the reason.
 *
 * Plain ES2017, no build step, no third-party code; loaded as an external file (no inline
 * script), so it works under a Content-Security-Policy of script-src 'self'.
 */
(function () {
  "use strict";

  var section = document.getElementById("upload");
  if (!section || !window.FormData || !window.XMLHttpRequest) {
    return;
  }
  var form = document.getElementById("upload-form");
  var filesInput = document.getElementById("upload-files");
  var folderInput = document.getElementById("upload-folder");
  var drop = document.getElementById("upload-drop");
  var progressBox = document.getElementById("upload-progress");
  var overall = document.getElementById("upload-overall");
  var overallText = document.getElementById("upload-overall-text");
  var studiesBox = document.getElementById("upload-studies");
  var summaryBox = document.getElementById("upload-summary");
  var limitsHint = document.getElementById("upload-limits");
  var submit = document.getElementById("upload-submit");
  var csrf = form.querySelector("input[name=csrf_token]").value;
  var batchFiles = parseInt(section.getAttribute("data-batch-files"), 10) || 50;
  var batchBytes = parseInt(section.getAttribute("data-batch-bytes"), 10) || 32 * 1024 * 1024;
  var RETRIES = 4;
  var HEAD_BYTES = 64 * 1024;
  var busy = false;

  folderInput.parentElement.hidden = false;
  drop.hidden = false;
  if (limitsHint) {
    limitsHint.textContent = "Choose files, a folder, or drop them here. They are sent in " +
      "batches; a batch cut off by the network is sent again.";
  }

  // --- reading the StudyInstanceUID from a file's first bytes ---------------------------------

  var LONG_VRS = ["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"];

  function ascii(bytes, start, length) {
    var text = "";
    for (var i = start; i < start + length && i < bytes.length; i++) {
      text += String.fromCharCode(bytes[i]);
    }
    return text.replace(/[\0 ]+$/, "");
  }

  function studyUidOf(buffer) {
    var bytes = new Uint8Array(buffer);
    var view = new DataView(buffer);
    if (bytes.length < 132 || ascii(bytes, 128, 4) !== "DICM") {
      return null;
    }
    var pos = 132;
    var syntax = "";
    while (pos + 8 <= bytes.length && view.getUint16(pos, true) === 0x0002) {
      var element = view.getUint16(pos + 2, true);
      var vr = ascii(bytes, pos + 4, 2);
      var length;
      if (LONG_VRS.indexOf(vr) >= 0) {
        length = view.getUint32(pos + 8, true);
        pos += 12;
      } else {
        length = view.getUint16(pos + 6, true);
        pos += 8;
      }
      if (element === 0x0010) {
        syntax = ascii(bytes, pos, length);
      }
      pos += length;
    }
    if (syntax === "1.2.840.10008.1.2.2" || syntax === "1.2.840.10008.1.2.1.99") {
      return null; // big endian or deflated: the server's answer says which study it is
    }
    var implicit = syntax === "1.2.840.10008.1.2";
    while (pos + 8 <= bytes.length) {
      var group = view.getUint16(pos, true);
      var elem = view.getUint16(pos + 2, true);
      var size;
      var valueAt;
      if (implicit) {
        size = view.getUint32(pos + 4, true);
        valueAt = pos + 8;
      } else {
        var vr2 = ascii(bytes, pos + 4, 2);
        if (LONG_VRS.indexOf(vr2) >= 0) {
          if (pos + 12 > bytes.length) {
            return null;
          }
          size = view.getUint32(pos + 8, true);
          valueAt = pos + 12;
        } else {
          size = view.getUint16(pos + 6, true);
          valueAt = pos + 8;
        }
      }
      if (group === 0x0020 && elem === 0x000d) {
        var uid = ascii(bytes, valueAt, size);
        return /^[0-9.]{1,64}$/.test(uid) ? uid : null;
      }
      if (group > 0x0020 || size === 0xffffffff) {
        return null; // passed it, or a sequence of unknown length before it
      }
      pos = valueAt + size;
    }
    return null;
  }

  function isZip(buffer) {
    var bytes = new Uint8Array(buffer, 0, Math.min(4, buffer.byteLength));
    return bytes.length === 4 && bytes[0] === 0x50 && bytes[1] === 0x4b &&
      (bytes[2] === 3 || bytes[2] === 5);
  }

  function readHead(file) {
    return file.slice(0, HEAD_BYTES).arrayBuffer();
  }

  // --- collecting files: inputs and drag and drop (folders too) -------------------------------

  function fromList(list) {
    var out = [];
    for (var i = 0; i < list.length; i++) {
      out.push({ file: list[i], path: list[i].webkitRelativePath || list[i].name });
    }
    return out;
  }

  function readAllEntries(reader) {
    return new Promise(function (resolve, reject) {
      var all = [];
      (function next() {
        reader.readEntries(function (entries) {
          if (!entries.length) {
            resolve(all);
            return;
          }
          all = all.concat(Array.prototype.slice.call(entries));
          next(); // a directory reader answers in chunks (100 at a time in Chromium)
        }, reject);
      })();
    });
  }

  async function walk(entry, out) {
    if (entry.isFile) {
      var file = await new Promise(function (resolve, reject) { entry.file(resolve, reject); });
      out.push({ file: file, path: entry.fullPath.replace(/^\//, "") });
    } else if (entry.isDirectory) {
      var children = await readAllEntries(entry.createReader());
      for (var i = 0; i < children.length; i++) {
        await walk(children[i], out);
      }
    }
  }

  async function fromDrop(dataTransfer) {
    var out = [];
    var entries = [];
    var items = dataTransfer.items || [];
    for (var i = 0; i < items.length; i++) {
      var entry = items[i].webkitGetAsEntry ? items[i].webkitGetAsEntry() : null;
      if (entry) {
        entries.push(entry);
      }
    }
    if (!entries.length) {
      return fromList(dataTransfer.files || []);
    }
    for (var j = 0; j < entries.length; j++) {
      await walk(entries[j], out);
    }
    return out;
  }

  // --- the progress display -----------------------------------------------------------------

  function row(label) {
    var wrap = document.createElement("div");
    wrap.className = "upload-study";
    var text = document.createElement("div");
    text.className = "hint";
    var bar = document.createElement("progress");
    bar.max = 1;
    bar.value = 0;
    wrap.appendChild(text);
    wrap.appendChild(bar);
    studiesBox.appendChild(wrap);
    return { label: label, text: text, bar: bar, total: 0, sent: 0, files: 0, answered: 0 };
  }

  function showRow(group) {
    group.bar.max = Math.max(group.total, 1);
    group.bar.value = group.sent;
    group.text.textContent = group.label + ": " + group.answered + " of " + group.files +
      " file" + (group.files === 1 ? "" : "s") + " done";
  }

  function megabytes(bytes) {
    return (bytes / (1024 * 1024)).toFixed(1) + " MB";
  }

  // --- sending --------------------------------------------------------------------------------

  function batches(items) {
    var out = [];
    var current = [];
    var size = 0;
    items.forEach(function (item) {
      var alone = item.zip || item.file.size >= batchBytes;
      if (current.length && (alone || current.length >= batchFiles ||
          size + item.file.size > batchBytes)) {
        out.push(current);
        current = [];
        size = 0;
      }
      current.push(item);
      size += item.file.size;
      if (alone) {
        out.push(current);
        current = [];
        size = 0;
      }
    });
    if (current.length) {
      out.push(current);
    }
    return out;
  }

  function sendOnce(batch, onProgress) {
    return new Promise(function (resolve) {
      var body = new FormData();
      body.append("csrf_token", csrf); // first, as the plain form sends it
      batch.forEach(function (item) {
        body.append("file", item.file, item.path);
      });
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      xhr.setRequestHeader("X-CSRF-Token", csrf);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.onprogress = function (event) {
        onProgress(event.loaded, event.total);
      };
      xhr.onload = function () {
        var answer = null;
        try {
          answer = JSON.parse(xhr.responseText);
        } catch (e) {
          answer = null;
        }
        resolve({ status: xhr.status, body: answer });
      };
      xhr.onerror = xhr.onabort = xhr.ontimeout = function () {
        resolve({ status: 0, body: null });
      };
      xhr.send(body);
    });
  }

  function sleep(ms) {
    return new Promise(function (resolve) { setTimeout(resolve, ms); });
  }

  async function send(batch, onProgress, say) {
    var answer = null;
    for (var attempt = 1; attempt <= RETRIES; attempt++) {
      answer = await sendOnce(batch, onProgress);
      // Cut connection (0) or a passing server trouble (5xx): send the same batch again.
      if (answer.status !== 0 && answer.status < 500) {
        return answer;
      }
      if (attempt < RETRIES) {
        say("The connection was interrupted; sending the batch again (try " + (attempt + 1) +
          " of " + RETRIES + ")…");
        await sleep(1000 * Math.pow(2, attempt - 1));
      }
    }
    return answer;
  }

  // --- the upload -------------------------------------------------------------------------------

  async function upload(items) {
    busy = true;
    submit.disabled = true;
    summaryBox.hidden = true;
    summaryBox.textContent = "";
    studiesBox.textContent = "";
    progressBox.hidden = false;
    overall.value = 0;
    overallText.textContent = "Reading " + items.length + " files…";

    var groups = {};
    var order = [];
    var totalBytes = 0;
    for (var i = 0; i < items.length; i++) {
      var item = items[i];
      var head = await readHead(item.file);
      item.zip = isZip(head);
      var uid = item.zip ? null : studyUidOf(head);
      var key = item.zip ? "zip:" + item.path : uid ? "study:" + uid : "other";
      if (!groups[key]) {
        var label = item.zip ? "ZIP archive " + item.path
          : uid ? "Study " + uid : "Other files (study read by the server)";
        groups[key] = row(label);
        order.push(key);
      }
      item.group = groups[key];
      item.group.total += item.file.size;
      item.group.files += 1;
      totalBytes += item.file.size;
    }
    order.forEach(function (key) { showRow(groups[key]); });

    var results = { instances: [], studies: {}, warnings: [], refused: [] };
    var doneBytes = 0;
    var all = batches(items);
    var stop = null;
    for (var b = 0; b < all.length && !stop; b++) {
      var batch = all[b];
      var batchSize = batch.reduce(function (n, it) { return n + it.file.size; }, 0);
      var inBatch = new Map(); // study row -> bytes of this batch, for its bar while sending
      batch.forEach(function (it) {
        inBatch.set(it.group, (inBatch.get(it.group) || 0) + it.file.size);
      });
      var say = function (text) { overallText.textContent = text; };
      say("Sending batch " + (b + 1) + " of " + all.length + "…");
      var answer = await send(batch, function (loaded, total) {
        var part = total ? Math.min(loaded / total, 1) : 0;
        overall.max = Math.max(totalBytes, 1);
        overall.value = doneBytes + part * batchSize;
        inBatch.forEach(function (bytes, group) {
          group.bar.value = group.sent + part * bytes;
        });
        overallText.textContent = "Batch " + (b + 1) + " of " + all.length + ": " +
          megabytes(doneBytes + part * batchSize) + " of " + megabytes(totalBytes) + " sent";
      }, say);
      var body = answer.body || {};
      if (answer.status === 0 || answer.status >= 500 || !Array.isArray(body.instances)) {
        var why = answer.status === 0
          ? "the connection was lost; nothing more is known, send it again"
          : (body.message || (body.error && body.error.message) || "the server refused the batch (" +
            answer.status + ")");
        batch.forEach(function (it) {
          results.refused.push({ name: it.path, reason: why });
        });
        if (answer.status === 401 || answer.status === 403) {
          stop = why; // the session ended or the page is stale: later batches would fail too
        }
      } else {
        (body.studies || []).forEach(function (s) {
          results.studies[s.orthanc_id] = s;
        });
        body.instances.forEach(function (inst) {
          results.instances.push(inst);
          if (inst.status === "failed") {
            results.refused.push({ name: inst.name || "file " + inst.index, reason: inst.reason });
          }
        });
        (body.warnings || []).forEach(function (w) {
          if (results.warnings.indexOf(w) < 0 && !/^Nothing was stored/.test(w)) {
            results.warnings.push(w);
          }
        });
      }
      doneBytes += batchSize;
      batch.forEach(function (it) {
        it.group.sent += it.file.size;
        it.group.answered += 1;
      });
      order.forEach(function (key) { showRow(groups[key]); });
      overall.max = Math.max(totalBytes, 1);
      overall.value = doneBytes;
    }
    overallText.textContent = stop ? "Stopped: " + stop
      : "Done: " + megabytes(totalBytes) + " in " + all.length + " batch" +
        (all.length === 1 ? "" : "es") + ".";
    showSummary(results);
    busy = false;
    submit.disabled = false;
  }

  function element(tag, text, className) {
    var node = document.createElement(tag);
    if (text !== undefined) {
      node.textContent = text;
    }
    if (className) {
      node.className = className;
    }
    return node;
  }

  function showSummary(results) {
    var stored = 0;
    var present = 0;
    var skipped = 0;
    var perStudy = {};
    results.instances.forEach(function (inst) {
      if (inst.status === "stored") {
        stored += 1;
      } else if (inst.status === "already-stored") {
        present += 1;
      } else if (inst.status === "skipped") {
        skipped += 1;
      }
      if ((inst.status === "stored" || inst.status === "already-stored") && inst.study) {
        var s = perStudy[inst.study] || (perStudy[inst.study] = { stored: 0, present: 0 });
        s[inst.status === "stored" ? "stored" : "present"] += 1;
      }
    });
    var ids = Object.keys(perStudy);
    summaryBox.textContent = "";
    var counts = element("p", stored + " stored, " + present + " already present, " +
      results.refused.length + " refused" + (skipped ? ", " + skipped + " skipped" : "") +
      ", in " + ids.length + (ids.length === 1 ? " study." : " studies."));
    counts.id = "upload-counts";
    summaryBox.appendChild(counts);
    results.warnings.forEach(function (w) {
      summaryBox.appendChild(element("div", w, "notice info"));
    });
    if (ids.length) {
      var table = element("table");
      table.id = "upload-result-studies";
      var head = element("tr");
      ["Study", "Stored", "Already present", "In the album"].forEach(function (h) {
        var th = element("th", h);
        th.scope = "col";
        head.appendChild(th);
      });
      table.appendChild(element("thead")).appendChild(head);
      var tbody = table.appendChild(element("tbody"));
      ids.forEach(function (id) {
        var study = results.studies[id] || {};
        var tr = element("tr");
        tr.appendChild(element("td", study.study_instance_uid || id, "mono"));
        tr.appendChild(element("td", String(perStudy[id].stored)));
        tr.appendChild(element("td", String(perStudy[id].present)));
        tr.appendChild(element("td", study.in_album === false ? "soon (retried automatically)"
          : "yes"));
        tbody.appendChild(tr);
      });
      var wrap = element("div", undefined, "table-wrap");
      wrap.appendChild(table);
      summaryBox.appendChild(wrap);
    }
    if (results.refused.length) {
      summaryBox.appendChild(element("h3", "Refused"));
      var list = element("ul");
      list.id = "upload-refused";
      results.refused.forEach(function (r) {
        var li = element("li");
        li.appendChild(element("span", r.name, "mono"));
        li.appendChild(document.createTextNode(": " + (r.reason || "refused")));
        list.appendChild(li);
      });
      summaryBox.appendChild(list);
    }
    if (stored + present) {
      var again = element("p");
      var link = element("a", "Show the album's studies", "button secondary");
      link.href = window.location.pathname;
      link.id = "upload-reload";
      again.appendChild(link);
      summaryBox.appendChild(again);
    }
    summaryBox.hidden = false;
  }

  // --- wiring -----------------------------------------------------------------------------------

  function start(items) {
    if (busy) {
      return;
    }
    if (!items.length) {
      summaryBox.textContent = "Choose files or a folder first.";
      summaryBox.hidden = false;
      return;
    }
    // The File objects stay readable; emptied inputs mean the next choice starts afresh.
    filesInput.value = "";
    folderInput.value = "";
    upload(items).catch(function (error) {
      busy = false;
      submit.disabled = false;
      overallText.textContent = "The upload stopped: " + error;
    });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    start(fromList(filesInput.files).concat(fromList(folderInput.files)));
  });
  folderInput.addEventListener("change", function () {
    start(fromList(folderInput.files));
  });
  ["dragenter", "dragover"].forEach(function (name) {
    section.addEventListener(name, function (event) {
      event.preventDefault();
      drop.classList.add("active");
    });
  });
  section.addEventListener("dragleave", function () {
    drop.classList.remove("active");
  });
  section.addEventListener("drop", function (event) {
    event.preventDefault();
    drop.classList.remove("active");
    fromDrop(event.dataTransfer).then(start);
  });
})();
