document.getElementById("root").dataset.version="0.0.13";
